"""The tagging page, its htmx answer partial and the campaign guide: permissions, the guide gate,
attributes per category, submitting, validation errors, model suggestions, calibration routing and
the answer partial's query count."""

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from annotate import tagging
from annotate.models import Answer, AttributeAnswer, Campaign, GuideRead, Lease, Task, Team, TeamMember
from annotate.views import SEED_SESSION_KEY
from catalog.attribute_schema import attribute_schema_ensure
from catalog.models import AttributeOption, TaxonomyNode
from catalog.services import taxonomy_path_ensure
from mlcore.models import AttributePrediction

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, ModelVersionFactory, ProductFactory, png, user_with_role

HTMX = {"HTTP_HX_REQUEST": "true"}
SANDAL, DRESS = "Shoes › Sandal", "Clothing › Dresses › Dress"
SLUGS = ["color", "pattern", "sleeve_length", "neckline", "skirt_length", "season", "persona_boho"]
GUIDE = """# How to tag

Tag what you **see**.

<script>alert("guide")</script><img src="x" onerror="alert(1)"><a href="javascript:alert(2)">bad link</a>
"""


@pytest.fixture
def schema(db):
    for path in (DRESS, SANDAL):
        taxonomy_path_ensure(path=path)
    return {a.slug: a for a in attribute_schema_ensure()}


@pytest.fixture
def campaign(schema):
    campaign = CampaignFactory(
        slug="tagging",
        name="Catalog tagging",
        kind=Campaign.Kind.ATTRIBUTES,
        guide=GUIDE,
        overlap_min=2,
        overlap_max=3,
        confidence_target=0.9,
        gold_first_count=0,
        gold_rate=0,
    )
    campaign.attributes.set([schema[s] for s in SLUGS])
    return campaign


def _product(path=SANDAL, **fields):
    return ProductFactory(master_category=TaxonomyNode.objects.get(path=path), **fields)


def _tasks(campaign, count=2, path=SANDAL, calibration=False):
    products = [_product(path) for _ in range(count)]
    tagging.tag_tasks_build(campaign=campaign, products=products, calibration=calibration)
    return [Task.objects.get(campaign=campaign, product=p) for p in products]


def tag_url(campaign):
    return reverse("annotate:tag", args=[campaign.slug])


def answer_url(campaign):
    return reverse("annotate:tag-answer", args=[campaign.slug])


def guide_url(campaign):
    return reverse("annotate:tag-guide", args=[campaign.slug])


def _shown_task(html: str) -> str:
    return re.search(r'name="task" value="([^"]+)"', html).group(1)


def _hidden(html: str) -> dict:
    return dict(re.findall(r'name="(task|idempotency_key)" value="([^"]+)"', html))


def _slugs_on_form(html: str) -> set[str]:
    """The attributes the tagger sees: fieldsets hidden for another category are left out."""
    shown = [part for part in html.split("<fieldset")[1:] if "hidden disabled" not in part.split(">")[0]]
    return {slug for part in shown for slug in re.findall(r'name="attr-([a-z_]+)"', part.split("</fieldset>")[0])}


def _checked(html: str, slug: str) -> list[str]:
    return re.findall(rf'name="attr-{slug}" value="([^"]+)" checked', html)


SANDAL_VALUES = {
    "attr-color": "red",
    "attr-pattern": "solid",
    "attr-season": ["summer", "spring"],
    "attr-persona_boho": "4",
}


def _tagger(username="tess", team=None):
    user = user_with_role("tagger", username=username)
    if team is not None:
        TeamMember.objects.create(team=team, user=user)
    return user


def _read_guide(campaign, user):
    GuideRead.objects.get_or_create(campaign=campaign, user=user)


# -- permissions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_tag_page_permission_matrix(client, as_role, campaign, role):
    _tasks(campaign, 1)
    user = as_role(role)
    if user is not None:
        _read_guide(campaign, user)
    response = client.get(tag_url(campaign))
    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    elif role in ("tagger", "admin"):
        assert response.status_code == 200 and 'id="tag-task"' in response.content.decode()
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_answer_permission_matrix(client, as_role, campaign, role):
    (task,) = _tasks(campaign, 1)
    user = as_role(role)
    if user is not None:
        _read_guide(campaign, user)
    response = client.post(
        answer_url(campaign),
        {"task": task.uuid, "idempotency_key": "k1", **SANDAL_VALUES, "duration_ms": "2500"},
        **HTMX,
    )
    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    elif role in ("tagger", "admin"):
        assert response.status_code == 200
    else:
        assert response.status_code == 403
    assert Answer.objects.count() == (1 if role in ("tagger", "admin") else 0)


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_guide_permission_matrix(client, as_role, campaign, role):
    user = as_role(role)
    response = client.get(guide_url(campaign))
    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    elif role in ("tagger", "admin"):
        assert response.status_code == 200
        assert GuideRead.objects.filter(campaign=campaign, user=user).exists()
    else:
        assert response.status_code == 403
    assert GuideRead.objects.count() == (1 if role in ("tagger", "admin") else 0)


def test_a_paused_or_match_campaign_is_not_found(client, campaign):
    client.force_login(_tagger())
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.PAUSED)
    for url in (tag_url(campaign), guide_url(campaign), answer_url(campaign)):
        response = client.post(url) if url == answer_url(campaign) else client.get(url)
        assert response.status_code == 404
    match = CampaignFactory(slug="matching")
    assert client.get(tag_url(match)).status_code == 404
    assert client.get(guide_url(match)).status_code == 404


# -- the guide -------------------------------------------------------------------------------------


def test_first_visit_goes_to_the_guide_then_the_task_shows(client, campaign):
    (task,) = _tasks(campaign, 1)
    tagger = _tagger()
    client.force_login(tagger)
    response = client.get(tag_url(campaign))
    assert response.status_code == 302 and response["Location"] == guide_url(campaign)
    # An htmx request is redirected by htmx, not swapped into the page.
    assert client.get(tag_url(campaign), **HTMX)["HX-Redirect"] == guide_url(campaign)
    assert not Lease.objects.exists()  # no task was handed out before the guide

    guide = client.get(guide_url(campaign)).content.decode()
    assert "Read the guide before your first task" in guide
    client.get(guide_url(campaign))
    assert GuideRead.objects.filter(campaign=campaign, user=tagger).count() == 1  # idempotent

    html = client.get(tag_url(campaign)).content.decode()
    assert _shown_task(html) == str(task.uuid)
    # The guide is linked beside the task, with its key.
    assert f'href="{guide_url(campaign)}"' in html and 'data-tag-key="g"' in html and "Guide <kbd>g</kbd>" in html


def test_guide_renders_sanitised_markdown_attributes_and_example_images(client, campaign, schema):
    schema["pattern"].description = "Look at the **largest** area. <script>steal()</script>"
    schema["pattern"].save()
    option = AttributeOption.objects.get(attribute=schema["pattern"], value="striped")
    option.example_image.save("striped.png", ContentFile(png(3)), save=True)
    client.force_login(_tagger())
    html = client.get(guide_url(campaign)).content.decode()
    assert "<h1>How to tag</h1>" in html and "<strong>see</strong>" in html
    assert "<script>alert" not in html and "onerror" not in html and "javascript:" not in html
    assert "<strong>largest</strong>" in html and "<script>steal" not in html
    for slug in SLUGS:
        assert f'id="attr-{schema[slug].slug}"' in html
    assert option.example_image.url in html and "Example: Striped" in html
    # Printable: the nav and buttons carry no-print, and the stylesheet hides them in print.
    assert 'class="guide-nav no-print"' in html
    stylesheet = (Path(settings.BASE_DIR) / "static" / "fitcheck" / "app.css").read_text()
    assert "@media print" in stylesheet and ".no-print" in stylesheet.split("@media print")[1]


# -- the task form ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "present", "absent"),
    [
        (SANDAL, {"color", "pattern", "season", "persona_boho"}, {"sleeve_length", "neckline", "skirt_length"}),
        (DRESS, {"color", "sleeve_length", "neckline", "skirt_length", "season"}, set()),
    ],
)
def test_the_form_shows_only_the_attributes_of_the_products_category(client, campaign, path, present, absent):
    _tasks(campaign, 1, path=path)
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    html = client.get(tag_url(campaign)).content.decode()
    slugs = _slugs_on_form(html)
    assert present <= slugs and not (absent & slugs)
    for slug in absent:
        assert f'data-slug="{slug}"' not in html


def test_with_the_category_attribute_the_other_categories_attributes_wait_hidden(client, campaign, schema):
    """The tagger may correct the category: the page carries every attribute, those of other
    categories hidden and disabled, each with the category values it applies to."""
    from catalog.attribute_schema import category_value

    campaign.attributes.add(schema["category"])
    _tasks(campaign, 1, path=SANDAL)
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    html = client.get(tag_url(campaign)).content.decode()
    assert _slugs_on_form(html) == {"category", "color", "pattern", "season", "persona_boho"}
    skirt = html.split('data-slug="skirt_length"')[1].split(">")[0]
    assert f'data-applies="{category_value(DRESS)}"' in skirt and "hidden disabled" in skirt
    assert f'data-category="{category_value(SANDAL)}"' in html
    # Posting a correction to "dress" needs the dress's attributes.
    fields = _hidden(html)
    values = {"attr-category": category_value(DRESS), "attr-color": "red", "attr-pattern": "solid"}
    values |= {"attr-persona_boho": "3", "attr-sleeve_length": "short", "attr-neckline": "v_neck"}
    response = client.post(answer_url(campaign), {**fields, **values, "duration_ms": "3000"}, **HTMX)
    html = response.content.decode()
    assert not Answer.objects.exists() and "required" in html
    # The re-render shows the dress's attributes, skirt length with its error.
    assert {"skirt_length", "sleeve_length", "neckline"} <= _slugs_on_form(html)
    response = client.post(
        answer_url(campaign), {**fields, **values, "attr-skirt_length": "midi", "duration_ms": "3000"}, **HTMX
    )
    stored = dict(Answer.objects.get().attribute_answers.values_list("attribute__slug", "value"))
    assert stored["skirt_length"] == "midi" and stored["category"] == category_value(DRESS)


def test_the_task_shows_the_product_and_keys_per_option(client, campaign):
    from catalog.models import NativeCategory

    (task,) = _tasks(campaign, 1)
    product = task.product
    native = NativeCategory.objects.create(retailer=product.retailer, path="Women > Shoes > Sandals")
    product.native_category, product.description = native, "Leather strap sandal."
    product.save()
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    html = client.get(tag_url(campaign)).content.decode()
    assert product.title in html and "Leather strap sandal." in html and "Women &gt; Shoes &gt; Sandals" in html
    assert product.images.first().image.url in html and 'class="tag-main"' in html
    assert 'tagged today: <b id="today-count">0</b>' in html
    # Keys 1-9 then letters, never g (the guide's key): color's 17th value, "can't tell", is i.
    assert 'data-opt-key="g"' not in html
    color = html.split('data-slug="color"')[1].split("</fieldset>")[0]
    assert re.findall(r'data-opt-key="([^"]+)"', color) == list("123456789abcdefhi")
    assert 'value="cant_tell"' in color and "Can&#x27;t tell <kbd>i</kbd>" in color
    assert 'type="checkbox" name="attr-season"' in html and 'type="radio" name="attr-color"' in html
    assert '<script src="/static/fitcheck/tag.js"' in html


def test_a_post_creates_the_answer_and_returns_the_next_product(client, campaign):
    _tasks(campaign, 2)
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    fields = _hidden(client.get(tag_url(campaign)).content.decode())
    response = client.post(answer_url(campaign), {**fields, **SANDAL_VALUES, "duration_ms": "3100"}, **HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and response["HX-Trigger"] == "answer-saved"
    assert "<html" not in html  # the partial, not a page
    answer = Answer.objects.get()
    assert str(answer.task.uuid) == fields["task"] and answer.duration_ms == 3100 and answer.choice == "tags"
    stored = dict(answer.attribute_answers.values_list("attribute__slug", "value"))
    assert stored == {"color": "red", "pattern": "solid", "season": "spring|summer", "persona_boho": "4"}
    next_task = _shown_task(html)
    assert next_task != fields["task"] and Task.objects.filter(uuid=next_task, campaign=campaign).exists()
    assert '<b id="today-count">1</b>' in html
    # The same key again: nothing new, and the page moves on.
    client.post(answer_url(campaign), {**fields, **SANDAL_VALUES}, **HTMX)
    assert Answer.objects.count() == 1


def test_invalid_values_re_render_the_same_product_with_errors(client, campaign):
    _tasks(campaign, 2)
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    fields = _hidden(client.get(tag_url(campaign)).content.decode())
    posted = {**fields, "attr-color": "plaid", "attr-season": "monsoon", "attr-sleeve_length": "long"}
    response = client.post(answer_url(campaign), posted, **HTMX)
    html = response.content.decode()
    assert response.status_code == 200 and "HX-Trigger" not in response
    assert _shown_task(html) == fields["task"]
    assert "must be one of" in html and "unknown option(s): monsoon" in html and "required" in html
    assert "sleeve_length: does not apply to this product" in html
    assert "Not saved" in html
    assert not Answer.objects.exists() and not AttributeAnswer.objects.exists()
    # What was right stays picked; the first attribute with an error is the active one.
    assert 'data-active="0"' in html


def test_suggestions_pre_fill_and_are_recorded(client, campaign, schema):
    (task,) = _tasks(campaign, 1)
    # The active model's predictions pre-fill the form; a retired model's are not shown.
    old = ModelVersionFactory(name="tagger-v1", kind="tagging", status="retired")
    new = ModelVersionFactory(name="tagger-v2", kind="tagging")
    AttributePrediction.objects.create(
        product=task.product, attribute=schema["color"], model_version=old, value="blue", confidence=0.6
    )
    AttributePrediction.objects.create(
        product=task.product, attribute=schema["color"], model_version=new, value="red", confidence=0.87
    )
    AttributePrediction.objects.create(
        product=task.product, attribute=schema["season"], model_version=new, value="summer|winter", confidence=0.55
    )
    # A prediction for an attribute that does not apply to a sandal is never shown.
    AttributePrediction.objects.create(
        product=task.product, attribute=schema["neckline"], model_version=new, value="crew", confidence=0.9
    )
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    html = client.get(tag_url(campaign)).content.decode()
    assert "suggested, 87%" in html and "suggested, 55%" in html and "neckline" not in html
    assert _checked(html, "color") == ["red"] and _checked(html, "season") == ["summer", "winter"]
    hidden = dict(re.findall(r'name="((?:suggested|confidence)-[a-z_]+)" value="([^"]+)"', html))
    assert hidden == {
        "suggested-color": "red",
        "confidence-color": "0.8700",
        "suggested-season": "summer|winter",
        "confidence-season": "0.5500",
    }
    # The tagger keeps the color and corrects the season.
    posted = {**_hidden(html), **hidden, **SANDAL_VALUES, "attr-season": "summer"}
    client.post(answer_url(campaign), posted, **HTMX)
    rows = {a.attribute.slug: a for a in AttributeAnswer.objects.select_related("attribute")}
    assert rows["color"].suggested_value == "red" and rows["color"].suggestion_confidence == pytest.approx(0.87)
    assert rows["color"].was_confirmed is True
    assert rows["season"].suggested_value == "summer|winter" and rows["season"].was_confirmed is False
    assert rows["pattern"].was_confirmed is None


def test_an_unsure_category_is_not_pre_selected_and_the_hint_names_what_the_model_is_sure_of(client, campaign, schema):
    """The model was unsure of the leaf (a sandal at 0.55) but sure of a shoe (0.97,
    AttributePrediction.backoff_path): the form asks which kind instead of pre-selecting a guess, and
    records no suggestion for the category. A confident leaf still pre-fills, as before."""
    from catalog.attribute_schema import category_value

    campaign.attributes.add(schema["category"])
    (task,) = _tasks(campaign, 1)
    version = ModelVersionFactory(name="tagger-v1", kind="tagging")
    category = AttributePrediction.objects.create(
        product=task.product,
        attribute=schema["category"],
        model_version=version,
        value=category_value(SANDAL),
        confidence=0.55,
        backoff_path="Shoes",
        backoff_confidence=0.97,
    )
    AttributePrediction.objects.create(
        product=task.product, attribute=schema["color"], model_version=version, value="red", confidence=0.9
    )
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    html = client.get(tag_url(campaign)).content.decode()
    field = html.split('data-slug="category"')[1].split("</fieldset>")[0]
    assert _checked(html, "category") == [] and "Model: Shoes (0.97) — which kind?" in field
    assert "suggested" not in field and 'name="suggested-category"' not in html
    assert _checked(html, "color") == ["red"]  # the other attributes pre-fill as before
    # The catalog's category (a sandal) still decides the attributes shown until one is picked.
    assert _slugs_on_form(html) == {"category", "color", "pattern", "season", "persona_boho"}
    hidden = dict(re.findall(r'name="((?:suggested|confidence)-[a-z_]+)" value="([^"]+)"', html))
    posted = {**_hidden(html), **hidden, **SANDAL_VALUES, "attr-category": category_value(SANDAL)}
    client.post(answer_url(campaign), posted, **HTMX)
    rows = {a.attribute.slug: a for a in AttributeAnswer.objects.select_related("attribute")}
    assert rows["category"].suggested_value == "" and rows["category"].was_confirmed is None
    assert rows["color"].was_confirmed is True
    # A sure leaf (no back-off) is pre-selected, with no hint.
    AttributePrediction.objects.filter(pk=category.pk).update(confidence=0.95, backoff_path="", backoff_confidence=None)
    (other,) = _tasks(campaign, 1)
    AttributePrediction.objects.create(
        product=other.product,
        attribute=schema["category"],
        model_version=version,
        value=category_value(SANDAL),
        confidence=0.95,
    )
    html = client.get(tag_url(campaign)).content.decode()
    assert _shown_task(html) == str(other.uuid)
    assert _checked(html, "category") == [category_value(SANDAL)] and "which kind?" not in html
    assert "suggested, 95%" in html.split('data-slug="category"')[1].split("</fieldset>")[0]


@pytest.mark.parametrize(
    ("inner", "present"),
    [
        ("Shoes", {"category", "color", "pattern", "season", "persona_boho"}),
        (
            "Clothing › Dresses",
            {"category", "color", "pattern", "sleeve_length", "neckline", "skirt_length", "season", "persona_boho"},
        ),
    ],
)
def test_a_product_filed_under_an_inner_node_gets_its_attributes_and_no_pre_selection(
    client, campaign, schema, inner, present
):
    """A retailer's "Shoes" maps to the master node "Shoes", which is not a leaf: no category option
    is pre-selected, the hint says what the catalog knows, and the attributes are those that apply
    to that node (to it or to an ancestor); tag.js falls back to it while no leaf is chosen."""
    from catalog.attribute_schema import category_value

    campaign.attributes.add(schema["category"])
    (task,) = _tasks(campaign, 1, path=inner)
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    html = client.get(tag_url(campaign)).content.decode()
    assert _checked(html, "category") == []
    assert f"Catalog: {inner} — which kind?" in html.split('data-slug="category"')[1].split("</fieldset>")[0]
    assert _slugs_on_form(html) == present
    assert f'data-category="{category_value(inner)}"' in html
    for slug in present - {"category", "color", "pattern", "season", "persona_boho"}:
        applies = html.split(f'data-slug="{slug}"')[1].split(">")[0]
        assert category_value(inner) in re.search(r'data-applies="([^"]*)"', applies).group(1).split()
    # "Can't tell" for the category: the answer needs the inner node's attributes, no more.
    values = {"attr-category": "cant_tell", "attr-color": "red", "attr-pattern": "solid", "attr-persona_boho": "3"}
    values |= {"attr-sleeve_length": "short", "attr-neckline": "v_neck", "attr-skirt_length": "midi"}
    values = {k: v for k, v in values.items() if k.removeprefix("attr-") in present}
    response = client.post(answer_url(campaign), {**_hidden(html), **values, "duration_ms": "3000"}, **HTMX)
    assert response["HX-Trigger"] == "answer-saved"
    stored = dict(Answer.objects.get(task=task).attribute_answers.values_list("attribute__slug", "value"))
    assert set(stored) == present and stored["category"] == "cant_tell"


def test_a_conflict_shows_a_notice_and_the_next_product(client, campaign):
    first, _ = _tasks(campaign, 2)
    tagger = _tagger()
    _read_guide(campaign, tagger)
    tagging.tag_submit(
        user=tagger,
        task=Task.objects.get(pk=first.pk),
        values={"color": "red", "pattern": "solid", "season": [], "persona_boho": "3"},
        duration_ms=2000,
        idempotency_key="earlier",
    )
    client.force_login(tagger)
    response = client.post(
        answer_url(campaign), {"task": first.uuid, "idempotency_key": "later", **SANDAL_VALUES}, **HTMX
    )
    html = response.content.decode()
    assert "You have already tagged this product." in html and "notice warning" in html
    assert _shown_task(html) != str(first.uuid)
    assert Answer.objects.count() == 1


def test_an_unknown_task_is_not_found(client, campaign):
    other = CampaignFactory(slug="other-tagging", kind=Campaign.Kind.ATTRIBUTES)
    (foreign,) = _tasks(other, 1)
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    for task in (foreign.uuid, "not-a-uuid", ""):
        response = client.post(answer_url(campaign), {"task": task, "idempotency_key": "k", **SANDAL_VALUES}, **HTMX)
        assert response.status_code == 404
    assert not Answer.objects.exists()


def test_done_when_nothing_is_left(client, campaign):
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    html = client.get(tag_url(campaign)).content.decode()
    assert 'data-state="done"' in html and "All done here" in html


# -- calibration routing ---------------------------------------------------------------------------


class TestCalibrationRouting:
    @pytest.fixture
    def setup(self, campaign):
        merch, cx = Team.objects.create(slug="merch", name="Merchandising"), Team.objects.create(slug="cx", name="CX")
        campaign.calibration_teams.set([merch, cx])
        # overlap_max 1: task_next_for alone would stop handing out a task after its first answer.
        Campaign.objects.filter(pk=campaign.pk).update(overlap_min=1, overlap_max=1, calibration_answers_per_team=1)
        campaign.refresh_from_db()
        (calibration,) = _tasks(campaign, 1, calibration=True)
        regular = set(_tasks(campaign, 4))
        return campaign, merch, cx, calibration, regular

    def _answer(self, user, task, key):
        tagging.tag_submit(
            user=user,
            task=Task.objects.select_related("campaign", "product__master_category").get(pk=task.pk),
            values={"color": "red", "pattern": "solid", "season": [], "persona_boho": "3"},
            duration_ms=3000,
            idempotency_key=key,
        )

    def test_the_second_team_is_served_at_the_overlap_cap(self, setup):
        campaign, merch, cx, calibration, regular = setup
        first = _tagger("mia", merch)
        assert tagging.tag_next_for(user=first, campaign=campaign, seed=0) == calibration  # calibration first
        self._answer(first, calibration, "m1")
        calibration.refresh_from_db()
        assert calibration.status == Task.Status.OPEN and calibration.answer_count == campaign.overlap_max
        # Plain routing would starve the second team...
        other = _tagger("cody", cx)
        from annotate.services import task_next_for

        assert task_next_for(user=_tagger("nobody"), campaign=campaign, seed=0) in regular
        # ...tag_next_for serves it; merchandising, at its cap, gets the regular task.
        assert tagging.tag_next_for(user=other, campaign=campaign, seed=0) == calibration
        assert Lease.objects.filter(annotator=other, task=calibration).exists()
        assert tagging.tag_next_for(user=_tagger("max", merch), campaign=campaign, seed=0) in regular
        # A second CX tagger is not sent there while the first holds the lease (the team's one answer).
        assert tagging.tag_next_for(user=_tagger("cleo", cx), campaign=campaign, seed=0) in regular
        # Asking again keeps the held task (a reload does not skip work).
        assert tagging.tag_next_for(user=other, campaign=campaign, seed=7) == calibration
        self._answer(other, calibration, "c1")
        calibration.refresh_from_db()
        assert calibration.status == Task.Status.COMPLETE
        assert tagging.tag_next_for(user=_tagger("cora", cx), campaign=campaign, seed=0) in regular

    def test_an_expired_lease_of_a_team_mate_does_not_block(self, setup):
        campaign, merch, cx, calibration, regular = setup
        holder = _tagger("hal", cx)
        assert tagging.tag_next_for(user=holder, campaign=campaign, seed=0) == calibration
        Lease.objects.filter(annotator=holder).update(expires_at=timezone.now() - timedelta(seconds=1))
        assert tagging.tag_next_for(user=_tagger("ivy", cx), campaign=campaign, seed=0) == calibration

    def test_the_page_serves_the_calibration_task_to_the_second_team(self, client, setup):
        campaign, merch, cx, calibration, regular = setup
        self._answer(_tagger("mia", merch), calibration, "m1")
        other = _tagger("cody", cx)
        _read_guide(campaign, other)
        client.force_login(other)
        assert _shown_task(client.get(tag_url(campaign)).content.decode()) == str(calibration.uuid)


# -- query count -----------------------------------------------------------------------------------


def test_answer_partial_query_count_is_pinned(client, campaign, schema, django_assert_num_queries):
    tasks = _tasks(campaign, 4)
    version = ModelVersionFactory(name="tagger-v1", kind="tagging")
    for task in tasks:
        AttributePrediction.objects.create(
            product=task.product, attribute=schema["color"], model_version=version, value="red", confidence=0.8
        )
    tagger = _tagger()
    _read_guide(campaign, tagger)
    client.force_login(tagger)
    # A fixed queue order from a fixed seed: routing finds the next task in one step.
    Task.objects.update(shuffle_key=F("id") + 1000)
    session = client.session
    session[SEED_SESSION_KEY] = 0
    session.save()
    fields = _hidden(client.get(tag_url(campaign)).content.decode())
    # Session, user and roles; the campaign, the guide-read check and the task (no images: not shown
    # again); tag_submit's key check, the person's stats and pause check, the campaign's attributes
    # (3), the locked task, the answer, its values, the stats counters (first answer: the row is
    # created), the task counter, the taggers' reliability per attribute, the consensus upserts, with
    # their savepoints, and the campaign's dirty flag; then the next
    # product: today's count, the calibration team, routing (stats, held leases, the server's gold
    # draw read and redrawn, queue) and the new lease, the product with its images, the attributes
    # again (3) and the model's suggestions.
    with django_assert_num_queries(49):
        response = client.post(answer_url(campaign), {**fields, **SANDAL_VALUES, "duration_ms": "2000"}, **HTMX)
    assert response.status_code == 200 and Answer.objects.count() == 1
    _tasks(campaign, 10)
    Task.objects.update(shuffle_key=F("id") + 1000)
    fields = _hidden(response.content.decode())
    with django_assert_num_queries(45):  # the stats row exists now: no get_or_create
        client.post(answer_url(campaign), {**fields, **SANDAL_VALUES, "duration_ms": "2000"}, **HTMX)
    assert Answer.objects.count() == 2


def test_a_direct_post_before_the_guide_is_sent_to_the_guide_and_saves_nothing(client, campaign):
    (task,) = _tasks(campaign, 1)
    client.force_login(_tagger())
    response = client.post(answer_url(campaign), {"task": task.uuid, "idempotency_key": "early", **SANDAL_VALUES})
    assert response.status_code == 302 and response["Location"] == reverse("annotate:tag-guide", args=[campaign.slug])
    response = client.post(
        answer_url(campaign), {"task": task.uuid, "idempotency_key": "early", **SANDAL_VALUES}, **HTMX
    )
    assert response["HX-Redirect"] == reverse("annotate:tag-guide", args=[campaign.slug])
    assert not Answer.objects.exists()
