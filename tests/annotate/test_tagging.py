"""Attribute tagging: the default schema, which attributes apply to which category, submitting
values (validation, roles, idempotency) and consensus per attribute kind."""

import pytest
from django.core.exceptions import PermissionDenied

from annotate import tagging
from annotate.models import AttributeAnswer, AttributeLabel, Campaign, Task, Team, TeamMember
from annotate.services import AnswerConflict, AnswerInvalid
from catalog.attribute_schema import attribute_schema_ensure
from catalog.models import Attribute, TaxonomyNode
from catalog.services import taxonomy_path_ensure

from ..factories import CampaignFactory, ProductFactory, user_with_role

_keys = iter(range(10**9))


@pytest.fixture
def schema(db):
    for path in ("Clothing › Dresses › Dress", "Shoes › Sandal", "Clothing › Bottoms › Trouser"):
        taxonomy_path_ensure(path=path)
    return {a.slug: a for a in attribute_schema_ensure()}


def _product(path):
    return ProductFactory(master_category=TaxonomyNode.objects.get(path=path), image=False)


def _campaign(schema, slugs, **fields):
    fields = {"overlap_min": 2, "overlap_max": 3, "confidence_target": 0.9, **fields}
    campaign = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES, **fields)
    campaign.attributes.set([schema[s] for s in slugs])
    return campaign


def _submit(user, task, values, duration_ms=4000, **kwargs):
    return tagging.tag_submit(
        user=user, task=task, values=values, duration_ms=duration_ms, idempotency_key=f"t{next(_keys)}", **kwargs
    )


class TestSchema:
    def test_default_schema_is_installed_once_and_keeps_edits(self, schema):
        assert {
            "category",
            "color",
            "pattern",
            "sleeve_length",
            "sleeve_type",
            "neckline",
            "skirt_length",
            "pant_length",
            "season",
        } <= set(schema)
        assert sum(1 for s in schema if s.startswith("persona_")) == 8
        assert schema["season"].kind == Attribute.Kind.MULTI and schema["persona_boho"].kind == Attribute.Kind.ORDINAL
        assert len(schema["sleeve_type"].values()) == 31  # 30 kinds and "can't tell"
        assert schema["color"].values()[-1] == Attribute.CANT_TELL
        assert schema["persona_edgy"].values() == ["1", "2", "3", "4", "5"]
        # The category options are the taxonomy's leaves.
        assert {o.label for o in schema["category"].options.all()} == {"Dress", "Sandal", "Trouser"}
        Attribute.objects.filter(slug="color").update(name="Main colour")
        again = {a.slug: a for a in attribute_schema_ensure()}
        assert again["color"].name == "Main colour" and Attribute.objects.count() == len(schema)

    @pytest.mark.parametrize(
        ("path", "present", "absent"),
        [
            (
                "Shoes › Sandal",
                {"color", "season", "persona_boho"},
                {"sleeve_length", "neckline", "skirt_length", "pant_length", "sleeve_type"},
            ),
            ("Clothing › Dresses › Dress", {"sleeve_length", "neckline", "skirt_length"}, {"pant_length"}),
            ("Clothing › Bottoms › Trouser", {"pant_length"}, {"sleeve_length", "skirt_length", "neckline"}),
        ],
    )
    def test_an_attribute_never_applies_to_a_category_it_does_not_cover(self, schema, path, present, absent):
        campaign = _campaign(schema, list(schema))
        product = _product(path)
        slugs = {
            a.slug
            for a in tagging.attributes_for_product(attributes=tagging.campaign_attributes(campaign), product=product)
        }
        assert present <= slugs and not (absent & slugs)
        # ...and a submission that names one is refused.
        tagging.tag_tasks_build(campaign=campaign, products=[product])
        task = Task.objects.get(campaign=campaign, product=product)
        wrong = sorted(absent)[0]
        with pytest.raises(AnswerInvalid) as caught:
            _submit(user_with_role("tagger"), task, {wrong: schema[wrong].values()[0]})
        assert caught.value.errors[wrong] == ["does not apply to this product"]
        assert not AttributeAnswer.objects.exists()


class TestSubmit:
    @pytest.fixture
    def task(self, schema):
        campaign = _campaign(schema, ["color", "season", "persona_boho"])
        product = _product("Shoes › Sandal")
        assert tagging.tag_tasks_build(campaign=campaign, products=[product]) == 1
        assert tagging.tag_tasks_build(campaign=campaign, products=[product]) == 0  # idempotent
        return Task.objects.select_related("campaign", "product__master_category").get(campaign=campaign)

    def test_values_are_checked_per_attribute(self, task):
        with pytest.raises(AnswerInvalid) as caught:
            _submit(user_with_role("tagger"), task, {"color": "plaid", "season": ["monsoon"]})
        assert set(caught.value.errors) == {"color", "season", "persona_boho"}
        assert "required" in caught.value.errors["persona_boho"]

    @pytest.mark.parametrize("role", ["employee", "ml"])
    def test_only_taggers_and_admins_tag(self, task, role):
        with pytest.raises(PermissionDenied):
            _submit(user_with_role(role), task, {"color": "red", "season": [], "persona_boho": "3"})

    def test_a_repeated_key_returns_the_first_answer_and_a_second_answer_conflicts(self, task):
        tagger = user_with_role("tagger")
        values = {"color": "red", "season": ["summer", "spring"], "persona_boho": "4"}
        first, created = tagging.tag_submit(
            user=tagger, task=task, values=values, duration_ms=3000, idempotency_key="same"
        )
        again, created_again = tagging.tag_submit(
            user=tagger, task=task, values=values, duration_ms=3000, idempotency_key="same"
        )
        assert created and not created_again and again.pk == first.pk
        stored = dict(AttributeAnswer.objects.filter(answer=first).values_list("attribute__slug", "value"))
        assert stored == {"color": "red", "season": "spring|summer", "persona_boho": "4"}  # option order
        with pytest.raises(AnswerConflict) as caught:
            _submit(tagger, task, values)
        assert caught.value.code == "already_answered"

    def test_suggestions_are_recorded_as_confirmed_or_corrected(self, task):
        answer, _ = _submit(
            user_with_role("tagger"),
            task,
            {"color": "red", "season": [], "persona_boho": "2"},
            suggestions={"color": ("red", 0.91), "persona_boho": ("4", 0.55)},
        )
        rows = {a.attribute.slug: a for a in answer.attribute_answers.select_related("attribute")}
        assert rows["color"].was_confirmed is True and rows["color"].suggestion_confidence == 0.91
        assert rows["persona_boho"].was_confirmed is False
        assert rows["season"].was_confirmed is None


class TestConsensusPerAttribute:
    @pytest.fixture
    def task(self, schema):
        campaign = _campaign(schema, ["color", "season", "persona_boho"])
        product = _product("Shoes › Sandal")
        tagging.tag_tasks_build(campaign=campaign, products=[product])
        return Task.objects.select_related("campaign", "product__master_category").get(campaign=campaign)

    def _labels(self, task):
        return {lab.attribute.slug: lab for lab in AttributeLabel.objects.filter(task=task).select_related("attribute")}

    def test_two_agreeing_taggers_settle_every_attribute_and_complete_the_task(self, task):
        for _ in range(2):
            _submit(user_with_role("tagger"), task, {"color": "red", "season": ["summer"], "persona_boho": "4"})
        labels = self._labels(task)
        # Single choice, 17 values, pooled accuracy 0.7: 0.7^2 / (0.7^2 + 16 * (0.3/16)^2) = 0.99886
        assert labels["color"].label == "red"
        assert labels["color"].confidence == pytest.approx(0.49 / (0.49 + 16 * (0.3 / 16) ** 2), abs=1e-5)
        # Multi: summer 2 of 2 -> (2 + 0.5) / 3 = 0.8333; others (0 + 0.5) / 3 = 0.1667.
        assert labels["season"].label == "summer"
        assert labels["season"].posterior["summer"] == pytest.approx(2.5 / 3, abs=1e-6)
        assert labels["season"].confidence == pytest.approx(2.5 / 3, abs=1e-6)
        assert labels["persona_boho"].label == "4" and labels["persona_boho"].confidence == 1.0
        task.refresh_from_db()
        # Multi-choice confidence 0.833 < 0.9 keeps "season" open until the cap (3 answers).
        assert not labels["season"].is_settled and task.status == Task.Status.OPEN
        _submit(user_with_role("tagger"), task, {"color": "red", "season": ["summer"], "persona_boho": "5"})
        task.refresh_from_db()
        assert task.status == Task.Status.COMPLETE and task.completed_at is not None

    def test_ordinal_uses_the_weighted_median_not_a_vote(self, task):
        for rating in ("1", "4", "5"):
            _submit(user_with_role("tagger"), task, {"color": "red", "season": [], "persona_boho": rating})
        boho = self._labels(task)["persona_boho"]
        # Median of 1, 4, 5 is 4; ratings within one step of 4: 4 and 5 -> 2/3.
        assert boho.label == "4" and boho.confidence == pytest.approx(2 / 3, abs=1e-6)
        assert boho.posterior == {
            "1": pytest.approx(1 / 3, abs=1e-6),
            "2": 0.0,
            "3": 0.0,
            "4": pytest.approx(1 / 3, abs=1e-6),
            "5": pytest.approx(1 / 3, abs=1e-6),
        }

    def test_too_fast_answers_count_nothing_and_cant_tell_can_win(self, task):
        _submit(user_with_role("tagger"), task, {"color": "red", "season": [], "persona_boho": "3"}, duration_ms=100)
        labels = self._labels(task)
        assert labels["color"].answer_count == 0 and labels["color"].label == ""
        for _ in range(2):
            _submit(user_with_role("tagger"), task, {"color": "cant_tell", "season": [], "persona_boho": "3"})
        assert self._labels(task)["color"].label == "cant_tell"

    def test_a_calibration_task_waits_for_every_calibration_team(self, task, schema):
        merch, cx = Team.objects.create(slug="merch", name="Merchandising"), Team.objects.create(slug="cx", name="CX")
        task.campaign.calibration_teams.set([merch, cx])
        Campaign.objects.filter(pk=task.campaign_id).update(calibration_answers_per_team=1)
        task.campaign.refresh_from_db()
        Task.objects.filter(pk=task.pk).update(is_calibration=True)
        task.refresh_from_db()
        values = {"color": "red", "season": ["summer"], "persona_boho": "4"}
        for _ in range(3):  # all attributes settle at the cap, but only merchandising has answered
            person = user_with_role("tagger")
            TeamMember.objects.create(team=merch, user=person)
            _submit(person, task, values)
        task.refresh_from_db()
        assert task.status == Task.Status.OPEN
        person = user_with_role("tagger")
        TeamMember.objects.create(team=cx, user=person)
        _submit(person, task, values)
        task.refresh_from_db()
        assert task.status == Task.Status.COMPLETE


@pytest.mark.parametrize(
    "url",
    [
        "/admin/catalog/attribute/",
        "/admin/catalog/attribute/add/",
        "/admin/annotate/team/add/",
        "/admin/annotate/campaign/add/",
        "/admin/annotate/exportsnapshot/",
    ],
)
def test_the_schema_teams_and_snapshots_are_in_the_admin(client, schema, url):
    client.force_login(user_with_role("admin"))
    response = client.get(url)
    assert response.status_code == 200
    if url == "/admin/catalog/attribute/":
        assert "Sleeve length" in response.content.decode()


class TestCategoryCorrection:
    """A tagger may correct the catalog's category; the attributes then follow the chosen one."""

    @pytest.fixture
    def task(self, schema):
        campaign = _campaign(schema, ["category", "color", "skirt_length", "pant_length"])
        tagging.tag_tasks_build(campaign=campaign, products=[_product("Clothing › Bottoms › Trouser")])
        return Task.objects.select_related("campaign", "product__master_category").get(campaign=campaign)

    def _value(self, path):
        from catalog.attribute_schema import category_value

        return category_value(path)

    def test_the_answer_holds_the_chosen_categorys_attributes(self, task):
        dress = self._value("Clothing › Dresses › Dress")
        with pytest.raises(AnswerInvalid) as caught:
            _submit(user_with_role("tagger"), task, {"category": dress, "color": "red", "pant_length": "full"})
        assert caught.value.errors == {
            "pant_length": ["does not apply to this product"],
            "skirt_length": ["required"],
        }
        answer, _ = _submit(user_with_role("tagger"), task, {"category": dress, "color": "red", "skirt_length": "midi"})
        stored = dict(AttributeAnswer.objects.filter(answer=answer).values_list("attribute__slug", "value"))
        assert stored == {"category": dress, "color": "red", "skirt_length": "midi"}
        # "Can't tell" keeps the catalog's category: a trouser's pant length is asked for.
        answer, _ = _submit(
            user_with_role("tagger"), task, {"category": "cant_tell", "color": "red", "pant_length": "full"}
        )
        assert answer.attribute_answers.count() == 3

    def test_the_task_completes_on_the_consensus_categorys_attributes(self, task):
        dress, trouser = self._value("Clothing › Dresses › Dress"), self._value("Clothing › Bottoms › Trouser")
        _submit(user_with_role("tagger"), task, {"category": trouser, "color": "red", "pant_length": "full"})
        for _ in range(2):
            _submit(user_with_role("tagger"), task, {"category": dress, "color": "red", "skirt_length": "maxi"})
        labels = {
            label.attribute.slug: label
            for label in AttributeLabel.objects.filter(task=task).select_related("attribute")
        }
        # Every answered attribute gets a label; the consensus says dress, so skirt length is what must settle.
        assert set(labels) == {"category", "color", "skirt_length", "pant_length"}
        assert labels["category"].label == dress and labels["skirt_length"].label == "maxi"
        assert labels["skirt_length"].is_settled and not labels["pant_length"].is_settled
        task.refresh_from_db()
        assert task.status == Task.Status.COMPLETE


class TestReliabilityPerAttribute:
    """The full recompute fits each tagger's reliability per attribute; the per-answer update then
    weighs their answers by it."""

    COLORS = ["red", "blue", "green", "black", "white", "yellow", "pink", "grey", "brown", "beige"]

    @pytest.fixture
    def crowd(self, schema):
        campaign = _campaign(schema, ["color", "persona_edgy"], overlap_min=4, overlap_max=5)
        products = [_product("Clothing › Dresses › Dress") for _ in range(12)]
        tagging.tag_tasks_build(campaign=campaign, products=products)
        tasks = list(Task.objects.select_related("campaign", "product__master_category").filter(campaign=campaign))
        careful = [user_with_role("tagger") for _ in range(3)]
        careless = user_with_role("tagger")
        for i, task in enumerate(tasks[:10]):
            truth, wrong = self.COLORS[i], self.COLORS[(i + 5) % 10]
            for person in careful:
                _submit(person, task, {"color": truth, "persona_edgy": "4"})
            _submit(careless, task, {"color": wrong, "persona_edgy": "1"})
        return campaign, tasks, careful, careless

    def _label(self, task, slug):
        return AttributeLabel.objects.get(task=task, attribute__slug=slug)

    def test_the_recompute_measures_each_tagger_per_attribute(self, crowd, schema):
        from annotate.consensus.services import consensus_recompute
        from annotate.models import AttributeReliability

        campaign, tasks, careful, careless = crowd
        campaign.refresh_from_db()
        assert campaign.consensus_dirty  # tagging marks the campaign for the next full recompute
        report = consensus_recompute(campaign_id=campaign.pk)
        assert report.tasks_written == 10 and report.tasks_skipped == 0 and report.annotator_count == 4
        rows = {(r.annotator_id, r.attribute.slug): r for r in AttributeReliability.objects.select_related("attribute")}
        assert len(rows) == 8  # 4 people x 2 attributes
        for person in careful:
            assert rows[(person.pk, "color")].accuracy > 0.85
            assert rows[(person.pk, "color")].agreement_count == rows[(person.pk, "color")].agreement_total == 10
            # Ordinal: all 10 ratings within one step of the median, pulled a little towards the crowd.
            assert rows[(person.pk, "persona_edgy")].accuracy > 0.9
        assert rows[(careless.pk, "color")].accuracy < 0.3
        assert rows[(careless.pk, "color")].agreement_count == 0
        # Ordinal: 0 of 10 near the median; (0 + 2 x 0.75) / (10 + 2) with the crowd's rate 30/40.
        assert rows[(careless.pk, "persona_edgy")].accuracy == pytest.approx(1.5 / 12, abs=1e-6)
        campaign.refresh_from_db()
        assert set(campaign.consensus_params["attributes"]) == {"color", "persona_edgy"}

    def test_after_the_recompute_a_reliable_tagger_outweighs_an_unreliable_one(self, crowd):
        from annotate.consensus.services import consensus_recompute

        campaign, tasks, careful, careless = crowd
        before, after = tasks[10], tasks[11]
        _submit(careful[0], before, {"color": "red", "persona_edgy": "5"})
        _submit(careless, before, {"color": "blue", "persona_edgy": "1"})
        # Everyone weighs the same before a recompute: a tie, and the lower median.
        tie = self._label(before, "color").posterior
        assert tie["red"] == tie["blue"] == max(tie.values())
        assert self._label(before, "persona_edgy").label == "1"

        consensus_recompute(campaign_id=campaign.pk)
        # The recompute re-settles existing products with the new reliabilities too.
        assert self._label(before, "color").label == "red" and self._label(before, "color").confidence > 0.9
        assert self._label(before, "persona_edgy").label == "5"
        # And a new answer is weighed at once.
        _submit(careless, after, {"color": "green", "persona_edgy": "1"})
        _submit(careful[1], after, {"color": "black", "persona_edgy": "5"})
        label = self._label(after, "color")
        assert label.label == "black" and label.confidence > 0.9
        assert self._label(after, "persona_edgy").label == "5"

    def test_a_product_tagged_during_the_recompute_keeps_its_update(self, crowd, monkeypatch):
        campaign, tasks, careful, careless = crowd
        _submit(careful[1], tasks[10], {"color": "red", "persona_edgy": "4"})
        real = tagging._fit_single

        def tag_meanwhile(attribute, answers):
            # After the versions and answers are read, before anything is written: an answer lands.
            if not getattr(tag_meanwhile, "done", False):
                tag_meanwhile.done = True
                _submit(careless, tasks[10], {"color": "blue", "persona_edgy": "1"})
            return real(attribute, answers)

        monkeypatch.setattr(tagging, "_fit_single", tag_meanwhile)
        Campaign.objects.filter(pk=campaign.pk).update(consensus_dirty=False)
        report = tagging.tag_consensus_recompute(campaign=campaign)
        assert report.tasks_skipped == 1 and report.tasks_written == 10
        # The per-answer update of the late answer stands (2 answers counted), and the campaign
        # stays dirty for the next run.
        assert self._label(tasks[10], "color").answer_count == 2
        campaign.refresh_from_db()
        assert campaign.consensus_dirty


def test_tagging_answers_count_in_the_stats_and_a_paused_tagger_is_refused(schema):
    from annotate.models import AnnotatorStats
    from annotate.services import AnnotatorPaused, annotator_pause

    campaign = _campaign(schema, ["color"])
    products = [_product("Shoes › Sandal") for _ in range(2)]
    tagging.tag_tasks_build(campaign=campaign, products=products)
    first, second = Task.objects.filter(campaign=campaign).select_related("campaign", "product__master_category")
    tagger = user_with_role("tagger")
    _submit(tagger, first, {"color": "red"}, duration_ms=200)
    stats = AnnotatorStats.objects.get(campaign=campaign, annotator=tagger)
    assert (stats.answer_count, stats.too_fast_count) == (1, 1)
    annotator_pause(campaign=campaign, annotator=tagger, paused=True)
    with pytest.raises(AnnotatorPaused):
        _submit(tagger, second, {"color": "red"})
