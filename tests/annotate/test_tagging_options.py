"""Tagging options and undo: required and optional attributes (Campaign.optional_attributes),
sampled persona ratings (Campaign.personas_per_task: each tagger rates k personas, in a rotation
that gives every persona the agreement report's pairable minimum), the undo of the last tagging
answer (tagging.tag_undo_last, z on the page) and skip (k), with the page and guide marks and the
admin's check."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate import services, tagging
from annotate.admin import CampaignAdminForm
from annotate.agreement import PAIRABLE_MIN_RATINGS
from annotate.models import Answer, AttributeAnswer, AttributeLabel, Campaign, GuideRead, Lease, Skip, Task
from annotate.services import AnswerInvalid, WrongCampaignKind
from catalog.attribute_schema import PERSONAS, attribute_schema_ensure
from catalog.models import TaxonomyNode
from catalog.services import taxonomy_path_ensure

from ..factories import CampaignFactory, ProductFactory, user_with_role

HTMX = {"HTTP_HX_REQUEST": "true"}
SANDAL = "Shoes › Sandal"
PERSONA_SLUGS = [f"persona_{p}" for p in PERSONAS]
_keys = iter(range(10**9))


@pytest.fixture
def schema(db):
    taxonomy_path_ensure(path=SANDAL)
    return {a.slug: a for a in attribute_schema_ensure()}


def _campaign(schema, slugs, *, optional=(), **fields):
    fields = {
        "overlap_min": 2,
        "overlap_max": 3,
        "confidence_target": 0.9,
        "gold_first_count": 0,
        "gold_rate": 0,
        **fields,
    }
    campaign = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES, **fields)
    campaign.attributes.set([schema[s] for s in slugs])
    campaign.optional_attributes.set([schema[s] for s in optional])
    return Campaign.objects.get(pk=campaign.pk)  # a fresh object: no cached optional ids


def _task(campaign, **fields):
    product = ProductFactory(master_category=TaxonomyNode.objects.get(path=SANDAL), image=False)
    tagging.tag_tasks_build(campaign=campaign, products=[product], **fields)
    return Task.objects.select_related("campaign", "product__master_category").get(product=product)


def _submit(user, task, values, duration_ms=4000):
    return tagging.tag_submit(
        user=user, task=task, values=values, duration_ms=duration_ms, idempotency_key=f"t{next(_keys)}"
    )


class TestRequiredAttributes:
    def test_an_optional_attribute_may_be_left_empty_a_required_one_may_not(self, schema):
        campaign = _campaign(schema, ["color", "pattern", "season"], optional=["pattern"])
        task = _task(campaign)
        tagger = user_with_role("tagger")
        with pytest.raises(AnswerInvalid) as caught:
            _submit(tagger, task, {"pattern": "solid"})
        assert caught.value.errors == {"color": ["required"]}
        assert not Answer.objects.exists()
        answer, created = _submit(tagger, task, {"color": "red"})
        assert created
        # No value for the optional attribute; the multi choice left alone is "none of these".
        assert dict(answer.attribute_answers.values_list("attribute__slug", "value")) == {"color": "red", "season": ""}
        # An optional attribute that is answered is checked like any other.
        with pytest.raises(AnswerInvalid) as caught:
            _submit(user_with_role("tagger"), task, {"color": "red", "pattern": "nonsense"})
        assert "pattern" in caught.value.errors

    def test_a_product_completes_without_its_optional_attributes_settling(self, schema):
        campaign = _campaign(schema, ["color", "persona_boho"], optional=["persona_boho"])
        task = _task(campaign)
        _submit(user_with_role("tagger"), task, {"color": "red"})
        assert Task.objects.get(pk=task.pk).status == Task.Status.OPEN  # overlap_min is 2
        _submit(user_with_role("tagger"), task, {"color": "red", "persona_boho": "4"})
        task.refresh_from_db()
        assert task.status == Task.Status.COMPLETE
        boho = AttributeLabel.objects.get(task=task, attribute=schema["persona_boho"])
        assert (boho.answer_count, boho.is_settled) == (1, False)

    def test_the_page_and_the_guide_mark_required_and_optional_attributes(self, client, schema):
        campaign = _campaign(schema, ["color", "persona_boho"], optional=["persona_boho"])
        _task(campaign)
        tagger = user_with_role("tagger")
        client.force_login(tagger)
        guide = client.get(reverse("annotate:tag-guide", args=[campaign.slug])).content.decode()
        color, boho = guide.split('id="attr-color"')[1], guide.split('id="attr-persona_boho"')[1]
        assert 'class="required-tag small">required' in color.split("</h3>")[0]
        assert "(optional)" in boho.split("</h3>")[0] and "required" not in boho.split("</h3>")[0]
        page = client.get(reverse("annotate:tag", args=[campaign.slug])).content.decode()
        color, boho = page.split('data-slug="color"')[1], page.split('data-slug="persona_boho"')[1]
        assert 'title="Required">*' in color.split("</legend>")[0]
        assert 'data-optional="1"' in boho.split(">")[0] and "(optional)" in boho.split("</legend>")[0]


class TestPersonaSampling:
    def test_taggers_in_turn_cover_every_persona_to_the_pairable_minimum(self, schema):
        # 8 personas, 3 per tagger, overlap_max 6: ceil(2 * 8 / 3) = 6 taggers give each persona 2 ratings.
        campaign = _campaign(
            schema, ["color", *PERSONA_SLUGS], personas_per_task=3, overlap_min=1, overlap_max=6, confidence_target=0.5
        )
        task = _task(campaign)
        personas = [a for a in tagging.campaign_attributes(campaign) if tagging.is_persona(a)]
        assert [p.slug for p in personas] == sorted(PERSONA_SLUGS, key=lambda s: (schema[s].position, s))
        asked_sets = []
        for n in range(6):
            tagger = user_with_role("tagger")
            asked = tagging.personas_asked(task=task, personas=personas, user=tagger)
            asked_sets.append([personas.index(p) for p in asked])
            _submit(tagger, task, {"color": "red", **{p.slug: "3" for p in asked}})
            status = Task.objects.get(pk=task.pk).status
            # Open until every persona has 2 ratings, though color settled at once.
            assert status == (Task.Status.COMPLETE if n == 5 else Task.Status.OPEN), n
        assert asked_sets[:3] == [[0, 1, 2], [3, 4, 5], [0, 6, 7]]
        counts = {p.pk: 0 for p in personas}
        for attribute_id in AttributeAnswer.objects.filter(attribute__in=personas).values_list(
            "attribute_id", flat=True
        ):
            counts[attribute_id] += 1
        assert sorted(counts.values()) == [2] * 6 + [3] * 2  # 18 ratings: floor or ceil of 18 / 8
        assert min(counts.values()) >= PAIRABLE_MIN_RATINGS
        assert AttributeLabel.objects.filter(task=task, attribute__in=personas, is_settled=True).count() == 8

    def test_a_tagger_rates_exactly_k_personas(self, schema):
        campaign = _campaign(schema, ["color", *PERSONA_SLUGS], personas_per_task=3, overlap_max=6)
        task = _task(campaign)
        tagger = user_with_role("tagger")
        for rated in (PERSONA_SLUGS[:2], PERSONA_SLUGS[:4]):
            with pytest.raises(AnswerInvalid) as caught:
                _submit(tagger, task, {"color": "red", **{s: "2" for s in rated}})
            assert caught.value.errors == {"personas": ["rate exactly 3 of the personas (the ones shown)"]}
        assert not Answer.objects.exists()
        # Which 3 were asked may have moved while the form was open: any 3 are taken.
        answer, _ = _submit(tagger, task, {"color": "red", **{s: "2" for s in PERSONA_SLUGS[5:]}})
        assert answer.attribute_answers.count() == 4

    def test_optional_sampled_personas_take_at_most_k(self, schema):
        campaign = _campaign(
            schema, ["color", *PERSONA_SLUGS], optional=PERSONA_SLUGS, personas_per_task=3, overlap_max=6
        )
        task = _task(campaign)
        answer, _ = _submit(user_with_role("tagger"), task, {"color": "red", PERSONA_SLUGS[0]: "5"})
        assert answer.attribute_answers.count() == 2
        with pytest.raises(AnswerInvalid):
            _submit(user_with_role("tagger"), task, {"color": "red", **{s: "2" for s in PERSONA_SLUGS[:4]}})

    def test_calibration_products_ask_every_persona(self, schema):
        campaign = _campaign(schema, ["color", *PERSONA_SLUGS], personas_per_task=3, overlap_max=6)
        task = _task(campaign, calibration=True)
        personas = [a for a in tagging.campaign_attributes(campaign) if tagging.is_persona(a)]
        assert tagging.personas_asked(task=task, personas=personas, user=user_with_role("tagger")) == personas
        with pytest.raises(AnswerInvalid) as caught:
            _submit(user_with_role("tagger"), task, {"color": "red", **{s: "2" for s in PERSONA_SLUGS[:3]}})
        assert set(caught.value.errors) == set(PERSONA_SLUGS[3:])

    def test_the_page_shows_only_the_asked_personas(self, client, schema):
        campaign = _campaign(schema, ["color", *PERSONA_SLUGS], personas_per_task=3, overlap_max=6)
        task = _task(campaign)
        tagger = user_with_role("tagger")
        GuideRead.objects.create(campaign=campaign, user=tagger)
        client.force_login(tagger)
        html = client.get(reverse("annotate:tag", args=[campaign.slug])).content.decode()
        shown = [s for s in PERSONA_SLUGS if f'data-slug="{s}"' in html]
        personas = [a for a in tagging.campaign_attributes(campaign) if tagging.is_persona(a)]
        assert shown == [p.slug for p in tagging.personas_asked(task=task, personas=personas, user=tagger)]
        assert len(shown) == 3 and "You rate 3 of the 8 personas" in html

    def test_the_admin_refuses_a_sample_too_small_for_the_pairable_minimum(self, schema):
        data = {
            "slug": "tagging",
            "name": "Tagging",
            "kind": "attributes",
            "status": "active",
            "consensus_method": "dawid_skene",
            "confidence_target": 0.9,
            "overlap_min": 1,
            "overlap_max": 5,
            "gold_first_count": 0,
            "gold_early_rate": 0,
            "gold_rate": 0,
            "gold_min_accuracy": 0.7,
            "gold_min_answers": 5,
            "min_duration_ms": 700,
            "same_option_run_limit": 25,
            "paused_vote_weight": 0.25,
            "model_vote_min_score": 0.5,
            "lease_seconds": 300,
            "candidate_count": 3,
            "calibration_answers_per_team": 2,
            "auto_accept_precision": 0.98,
            "audit_share": 0.02,
            "retrain_every_labels": 500,
            "attributes": [schema[s].pk for s in ["color", *PERSONA_SLUGS]],
            "optional_attributes": [schema["season"].pk],
            "personas_per_task": 3,
        }
        form = CampaignAdminForm(data=data)
        assert not form.is_valid()
        assert "at least 6" in form.errors["personas_per_task"][0]
        assert "among the campaign's attributes" in form.errors["optional_attributes"][0]
        form = CampaignAdminForm(data={**data, "overlap_max": 6, "optional_attributes": [schema["persona_boho"].pk]})
        assert form.is_valid(), form.errors


class TestTagUndo:
    def test_undo_revokes_recomputes_reopens_and_leases_the_product_back(self, schema):
        campaign = _campaign(schema, ["color", "pattern"])
        task = _task(campaign)
        other = _task(campaign)
        first, second = user_with_role("tagger"), user_with_role("tagger")
        _submit(first, task, {"color": "red", "pattern": "solid"})
        answer, _ = _submit(second, task, {"color": "red", "pattern": "solid"})
        assert Task.objects.get(pk=task.pk).status == Task.Status.COMPLETE
        assert tagging.tag_next_for(user=second, campaign=campaign, seed=0) == other

        undone = tagging.tag_undo_last(user=second, campaign=campaign)
        assert undone == task
        answer.refresh_from_db()
        assert answer.revoked_at is not None and answer.attribute_answers.count() == 2  # kept, revoked
        task.refresh_from_db()
        assert (task.answer_count, task.status) == (1, Task.Status.OPEN)
        color = AttributeLabel.objects.get(task=task, attribute=schema["color"])
        assert (color.answer_count, color.is_settled) == (1, False)
        assert Campaign.objects.get(pk=campaign.pk).consensus_dirty
        assert list(Lease.objects.filter(annotator=second).values_list("task_id", flat=True)) == [task.pk]
        assert tagging.tag_next_for(user=second, campaign=campaign, seed=0) == task
        # Tagged again: no "already answered".
        _, created = _submit(second, Task.objects.get(pk=task.pk), {"color": "blue", "pattern": "solid"})
        assert created and Task.objects.get(pk=task.pk).answer_count == 2

    def test_nothing_to_undo_past_the_window_or_in_another_campaign(self, schema):
        campaign = _campaign(schema, ["color"])
        task = _task(campaign)
        tagger = user_with_role("tagger")
        answer, _ = _submit(tagger, task, {"color": "red"})
        Answer.objects.filter(pk=answer.pk).update(created_at=timezone.now() - services.UNDO_WINDOW - timedelta(1))
        assert tagging.tag_undo_last(user=tagger, campaign=campaign) is None
        assert Answer.objects.get(pk=answer.pk).revoked_at is None
        with pytest.raises(WrongCampaignKind):
            tagging.tag_undo_last(user=tagger, campaign=CampaignFactory(slug="lunch"))

    def test_z_and_k_on_the_page(self, client, schema):
        campaign = _campaign(schema, ["color"], overlap_min=1, overlap_max=1)
        first, second = _task(campaign), _task(campaign)
        tagger = user_with_role("tagger")
        GuideRead.objects.create(campaign=campaign, user=tagger)
        client.force_login(tagger)
        page = client.get(reverse("annotate:tag", args=[campaign.slug])).content.decode()
        assert 'data-tag-key="k"' in page and 'data-tag-key="z"' in page and "<kbd>k</kbd> skip" in page
        shown = first if f'data-task="{first.uuid}"' in page else second
        rest = second if shown == first else first
        response = client.post(reverse("annotate:tag-skip", args=[campaign.slug]), {"task": shown.uuid}, **HTMX)
        assert f'data-task="{rest.uuid}"' in response.content.decode() and "Skipped." in response.content.decode()
        assert Skip.objects.filter(task=shown, annotator=tagger).exists() and not Answer.objects.exists()
        _submit(tagger, Task.objects.select_related("campaign").get(pk=rest.pk), {"color": "red"})
        response = client.post(reverse("annotate:tag-undo", args=[campaign.slug]), **HTMX)
        html = response.content.decode()
        assert f'data-task="{rest.uuid}"' in html and "Undone: tag it again." in html
        assert Answer.objects.get().revoked_at is not None
        response = client.post(reverse("annotate:tag-undo", args=[campaign.slug]), **HTMX)
        assert "Nothing to undo." in response.content.decode()

    @pytest.mark.parametrize("role", ["anonymous", "employee", "ml"])
    def test_only_taggers_and_admins_undo_or_skip(self, client, as_role, schema, role):
        campaign = _campaign(schema, ["color"])
        task = _task(campaign)
        as_role(role)
        undo = client.post(reverse("annotate:tag-undo", args=[campaign.slug]))
        skip = client.post(reverse("annotate:tag-skip", args=[campaign.slug]), {"task": task.uuid})
        expected = 302 if role == "anonymous" else 403
        assert undo.status_code == skip.status_code == expected and not Skip.objects.exists()
