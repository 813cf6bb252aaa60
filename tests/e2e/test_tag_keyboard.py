"""The tagging page in a real browser (headless Chromium): a tagger is sent to the guide first, then
tags 20 demo products (Fashion-MNIST) by keyboard alone, each bringing the next product without a page reload."""

from pathlib import Path

import pytest

from annotate import tagging
from annotate.models import Answer, Campaign, GuideRead, Task
from catalog import demo_data
from catalog.attribute_schema import attribute_schema_ensure
from catalog.fashion_mnist import fashion_mnist_load
from catalog.models import Product

from ..factories import CampaignFactory, user_with_role
from .test_verify_keyboard import CHROMEDRIVER, CHROMIUM, _wait_for, browser  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]
DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_dataset = pytest.mark.skipif(
    not all((DATASET_DIR / name).is_file() for name in demo_data.FILES),
    reason="Debian package dataset-fashion-mnist is not installed",
)

PRODUCT_COUNT = 20
OPTION_KEYS = "123456789abcdefhijlmnopqrstuvwxy"  # as annotate.tag_views.OPTION_KEYS: no g, k, z


def _state(driver) -> tuple[str | None, str | None]:
    # One script call: htmx may swap the node between a find and a read.
    return tuple(
        driver.execute_script(
            """const s = document.getElementById('tag-task');
               return [s ? s.dataset.state : null, s ? (s.dataset.task || null) : null];"""
        )
    )


def _fields(driver) -> list[tuple[str, str, list[str]]]:
    """The form's shown attributes in order: (slug, kind, option values), read from the page."""
    return driver.execute_script(
        """return Array.from(document.querySelectorAll('#tag-task fieldset.attr:not([hidden])')).map(f => [
             f.dataset.slug, f.dataset.kind,
             Array.from(f.querySelectorAll('label.opt input')).map(i => i.value)]);"""
    )


def _keys_for(i: int, fields) -> tuple[list[str], dict[str, str]]:
    """The keys a tagger presses for the i-th product, given the attributes its category shows, and
    the values they mean. Every third product picks its pattern with the arrow keys and Space."""
    from selenium.webdriver.common.keys import Keys

    keys, expected = [], {}
    for n, (slug, kind, options) in enumerate(fields):
        if kind == "multi":
            chosen = sorted({i % len(options), (i + 1) % len(options)} if i % 3 else {i % len(options)})
            keys += [OPTION_KEYS[c] for c in chosen] + [Keys.TAB]  # toggle, then move on
            expected[slug] = "|".join(options[c] for c in chosen)
            continue
        pick = (i * (n + 2)) % min(len(options), 9)
        if slug == "pattern" and i % 3 == 0:
            keys += [Keys.ARROW_DOWN] * (pick + 1) + [" "]  # the cursor starts before the first option
        elif slug == "color" and i == 0:
            # A slip: pick another color, go back, clear it, pick again.
            keys += [OPTION_KEYS[(pick + 1) % 9], Keys.ARROW_LEFT, Keys.BACKSPACE, OPTION_KEYS[pick]]
        else:
            keys.append(OPTION_KEYS[pick])  # single choice or rating: picks, then the next is active
        expected[slug] = options[pick]
    return keys + [Keys.ENTER], expected


def _tagging_start(live_server, browser, product_count: int):
    """A tagging campaign over product_count demo products, the tagger "tara" logged in, past the
    guide (Enter) and on her first product. Returns (campaign, tagger)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # Demo products: Fashion-MNIST images and titles, each filed under its master category, so the
    # form differs by product (sleeves for tops and dresses, pant length for trousers, neither for bags).
    fashion_mnist_load(
        directory=str(DATASET_DIR),
        allow_download=False,
        product_count=product_count,
        photo_in_catalog_count=0,
        photo_not_in_catalog_count=0,
        photo_non_product_count=0,
    )
    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(
        slug="tagging",
        name="Catalog tagging",
        kind=Campaign.Kind.ATTRIBUTES,
        guide="# Guide\n\nTag what you see.",
        gold_first_count=0,
        gold_rate=0,
    )
    slugs = ["color", "pattern", "sleeve_length", "pant_length", "season", "persona_boho"]
    campaign.attributes.set([schema[s] for s in slugs])
    products = list(Product.objects.select_related("master_category"))
    assert len(products) == product_count
    tagging.tag_tasks_build(campaign=campaign, products=products)
    tagger = user_with_role("tagger", username="tara", password="tara-password-1")

    browser.get(f"{live_server.url}/accounts/login/?next=/tag/{campaign.slug}/")
    browser.find_element(By.NAME, "username").send_keys("tara")
    browser.find_element(By.NAME, "password").send_keys("tara-password-1")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # The first visit goes to the guide; Enter starts tagging.
    _wait_for(lambda: browser.current_url.endswith(f"/tag/{campaign.slug}/guide/"))
    assert "Read the guide before your first task" in browser.page_source
    assert GuideRead.objects.filter(campaign=campaign, user=tagger).exists()
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    _wait_for(lambda: _state(browser)[0] == "task")
    assert browser.current_url.endswith(f"/tag/{campaign.slug}/")
    return campaign, tagger


@needs_dataset
@pytest.mark.django_db(transaction=True)
def test_a_tagger_reads_the_guide_then_tags_twenty_products_by_keyboard(live_server, browser):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    campaign, tagger = _tagging_start(live_server, browser, PRODUCT_COUNT)
    # A marker that a full page load would wipe out.
    browser.execute_script("window.__noReload = 'still here';")

    # Enter with attributes unanswered submits nothing and says what is missing.
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    hint = browser.execute_script("return document.querySelector('#tag-task .tag-hint').textContent;")
    assert "Answer every attribute first" in hint and "Color" in hint
    assert not Answer.objects.exists()

    attributes = tagging.campaign_attributes(campaign)
    expected_by_task, seen, forms = {}, [], set()
    for i in range(PRODUCT_COUNT):
        state, task = _state(browser)
        assert state == "task" and task not in seen
        seen.append(task)
        fields = _fields(browser)
        shown = {slug for slug, _, _ in fields}
        product = Task.objects.select_related("product__master_category").get(uuid=task).product
        applies = {a.slug for a in tagging.attributes_for_product(attributes=attributes, product=product)}
        assert shown == applies  # only what applies to the product's category
        forms.add(frozenset(shown))
        keys, expected_by_task[task] = _keys_for(i, fields)
        ActionChains(browser).send_keys(*keys).perform()
        _wait_for(lambda: (s := _state(browser)) and (s[0] == "done" or (s[1] and s[1] != seen[-1])))

    assert _state(browser)[0] == "done"
    assert len(forms) >= 2  # the demo's categories gave different forms
    assert browser.execute_script("return window.__noReload;") == "still here"
    assert browser.execute_script("return document.getElementById('today-count').textContent;") == str(PRODUCT_COUNT)
    answers = list(
        Answer.objects.filter(annotator=tagger).select_related("task").prefetch_related("attribute_answers__attribute")
    )
    assert len(answers) == PRODUCT_COUNT
    for answer in answers:
        stored = {a.attribute.slug: a.value for a in answer.attribute_answers.all()}
        assert stored == expected_by_task[str(answer.task.uuid)]
        assert answer.duration_ms > 0


@pytest.mark.django_db(transaction=True)
def test_correcting_the_category_by_keyboard_brings_its_attributes(live_server, browser):  # noqa: F811
    """A product filed as a trouser is a dress: picking "Dress" shows skirt length and hides pant
    length, without a reload; the answer holds the dress's attributes."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from catalog.attribute_schema import category_value
    from catalog.services import taxonomy_path_ensure

    from ..factories import ProductFactory

    dress, trouser = "Clothing › Dresses › Dress", "Clothing › Bottoms › Trouser"
    taxonomy_path_ensure(path=dress)
    node = taxonomy_path_ensure(path=trouser)
    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES, gold_first_count=0, gold_rate=0)
    campaign.attributes.set([schema[s] for s in ("category", "color", "skirt_length", "pant_length")])
    tagging.tag_tasks_build(campaign=campaign, products=[ProductFactory(master_category=node)])
    tagger = user_with_role("tagger")
    _tagging_open(browser, live_server, campaign, tagger)
    assert [slug for slug, _, _ in _fields(browser)] == ["category", "color", "pant_length"]
    key = browser.execute_script(
        "return document.querySelector('fieldset[data-slug=category] input[value=\"' + arguments[0] + '\"]')"
        ".closest('label').dataset.optKey;",
        category_value(dress),
    )
    ActionChains(browser).send_keys(key).perform()
    fields = _fields(browser)
    assert [slug for slug, _, _ in fields] == ["category", "color", "skirt_length"]
    skirt = fields[2][2]
    ActionChains(browser).send_keys(OPTION_KEYS[0], OPTION_KEYS[skirt.index("midi")], Keys.ENTER).perform()
    _wait_for(lambda: _state(browser)[0] == "done")
    stored = dict(Answer.objects.get().attribute_answers.values_list("attribute__slug", "value"))
    assert stored == {"category": category_value(dress), "color": schema["color"].values()[0], "skirt_length": "midi"}


@pytest.mark.django_db(transaction=True)
def test_a_product_filed_under_an_inner_node_keeps_its_attributes_while_no_leaf_is_chosen(
    live_server,
    browser,  # noqa: F811
):
    """A product filed under "Clothing › Dresses" (an inner node, not a category option): nothing is
    pre-selected and skirt length shows; picking a trouser swaps it for pant length, and "can't
    tell" or clearing the category brings back the inner node's attributes (tag.js falls back to
    data-category, which data-applies lists)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from catalog.attribute_schema import category_value
    from catalog.services import taxonomy_path_ensure

    from ..factories import ProductFactory

    taxonomy_path_ensure(path="Clothing › Dresses › Dress")
    trouser = "Clothing › Bottoms › Trouser"
    taxonomy_path_ensure(path=trouser)
    node = taxonomy_path_ensure(path="Clothing › Dresses")
    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES, gold_first_count=0, gold_rate=0)
    campaign.attributes.set([schema[s] for s in ("category", "color", "skirt_length", "pant_length")])
    tagging.tag_tasks_build(campaign=campaign, products=[ProductFactory(master_category=node)])
    tagger = user_with_role("tagger")
    _tagging_open(browser, live_server, campaign, tagger)
    checked = "return document.querySelector('fieldset[data-slug=category] input:checked');"
    assert browser.execute_script(checked) is None
    assert [slug for slug, _, _ in _fields(browser)] == ["category", "color", "skirt_length"]

    def key_of(value):
        return browser.execute_script(
            "return document.querySelector('fieldset[data-slug=category] input[value=\"' + arguments[0] + '\"]')"
            ".closest('label').dataset.optKey;",
            value,
        )

    ActionChains(browser).send_keys(key_of(category_value(trouser))).perform()
    assert [slug for slug, _, _ in _fields(browser)] == ["category", "color", "pant_length"]
    # Back to the category, clear it: the catalog's inner node rules again.
    ActionChains(browser).send_keys(Keys.ARROW_LEFT, Keys.BACKSPACE).perform()
    assert browser.execute_script(checked) is None
    assert [slug for slug, _, _ in _fields(browser)] == ["category", "color", "skirt_length"]
    ActionChains(browser).send_keys(key_of(category_value(trouser)), Keys.ARROW_LEFT).perform()
    ActionChains(browser).send_keys(key_of("cant_tell")).perform()
    fields = _fields(browser)
    assert [slug for slug, _, _ in fields] == ["category", "color", "skirt_length"]
    skirt = fields[2][2]
    ActionChains(browser).send_keys(OPTION_KEYS[0], OPTION_KEYS[skirt.index("midi")], Keys.ENTER).perform()
    _wait_for(lambda: _state(browser)[0] == "done")
    stored = dict(Answer.objects.get().attribute_answers.values_list("attribute__slug", "value"))
    assert stored == {"category": "cant_tell", "color": schema["color"].values()[0], "skirt_length": "midi"}


def _tagging_open(browser, live_server, campaign, tagger) -> None:
    """Log `tagger` in (guide read) and open `campaign`'s tagging page until a task shows."""
    GuideRead.objects.create(campaign=campaign, user=tagger)
    browser.get(f"{live_server.url}/accounts/login/")
    browser.add_cookie(_session_cookie(tagger))
    browser.get(f"{live_server.url}/tag/{campaign.slug}/")
    _wait_for(lambda: _state(browser)[0] == "task")


def _session_cookie(user) -> dict:
    """A logged-in session for `user`, as a browser cookie."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"  # the first is axes, a check only
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return {"name": settings.SESSION_COOKIE_NAME, "value": session.session_key, "path": "/"}


@pytest.mark.django_db(transaction=True)
def test_k_skips_a_product_and_z_undoes_the_last_answer(live_server, browser):  # noqa: F811
    """k: no answer, the lease released, the next product without a reload; an optional attribute
    may stay empty (Enter submits); z: the answer is revoked and its product is back on screen."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from annotate.models import Lease, Skip

    from ..factories import ProductFactory

    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES, gold_first_count=0, gold_rate=0)
    campaign.attributes.set([schema["color"], schema["persona_boho"]])
    campaign.optional_attributes.set([schema["persona_boho"]])
    tagging.tag_tasks_build(campaign=campaign, products=[ProductFactory(), ProductFactory()])
    tagger = user_with_role("tagger")
    _tagging_open(browser, live_server, campaign, tagger)
    browser.execute_script("window.__noReload = 'still here';")
    first = _state(browser)[1]
    assert "(optional)" in browser.execute_script(
        "return document.querySelector('fieldset[data-slug=persona_boho] legend').textContent;"
    )

    ActionChains(browser).send_keys("k").perform()
    _wait_for(lambda: (s := _state(browser))[1] and s[1] != first)
    second = _state(browser)[1]
    assert not Answer.objects.exists() and Skip.objects.filter(task__uuid=first, annotator=tagger).exists()
    assert not Lease.objects.filter(task__uuid=first).exists()

    ActionChains(browser).send_keys(OPTION_KEYS[0], Keys.ENTER).perform()  # a color; no persona rating
    _wait_for(lambda: _state(browser)[1] == first)  # the skipped product: nothing else is left
    answer = Answer.objects.get()
    assert str(answer.task.uuid) == second
    assert dict(answer.attribute_answers.values_list("attribute__slug", "value")) == {
        "color": schema["color"].values()[0]
    }

    ActionChains(browser).send_keys("z").perform()
    _wait_for(lambda: _state(browser)[1] == second)
    answer.refresh_from_db()
    assert answer.revoked_at is not None
    assert Task.objects.get(uuid=second).answer_count == 0
    assert "Undone" in browser.find_element("id", "tag-task").text
    assert browser.execute_script("return window.__noReload;") == "still here"


# The product's main image: its box, the elements of the page whose centre (in the window) shows
# something other than the image, its computed image-rendering, and the viewport.
MAIN_IMAGE_JS = """const i = document.querySelector('#tag-task .tag-main'); const r = i.getBoundingClientRect();
const covered = [...document.body.querySelectorAll('*')].filter(e => e !== i && !e.contains(i)).map(e => {
  const b = e.getBoundingClientRect(), x = b.left + b.width / 2, y = b.top + b.height / 2;
  return b.width && b.height && x >= 0 && y >= 0 && x < innerWidth && y < innerHeight
    && document.elementFromPoint(x, y) !== i ? e.outerHTML.slice(0, 60) : null;
}).filter(Boolean);
return {zoomed: document.getElementById('tag-task').classList.contains('zoomed'),
        left: r.left, top: r.top, width: r.width, height: r.height, rendering: getComputedStyle(i).imageRendering,
        covered,
        natural: [i.naturalWidth, i.naturalHeight], innerWidth, innerHeight};"""
# The form's values as they would be sent: what the zoom key must never change.
FORM_VALUES_JS = """return [...new FormData(document.querySelector('#tag-task form.tag-form'))]
  .filter(([name]) => name.startsWith('attr-')).map(([name, value]) => name + '=' + value);"""


@pytest.mark.django_db(transaction=True)
def test_0_held_zooms_the_product_image_and_changes_no_answer(live_server, browser):  # noqa: F811
    """0 held (also with a checkbox focused, where Space would toggle it): the 28 x 28 image fills
    the window over the page, pixelated; let go, the page returns with the same values picked. The
    "Hold to zoom" button held with the mouse does the same. Then Enter stores those values."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from ..factories import ProductFactory

    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(slug="tagging", kind=Campaign.Kind.ATTRIBUTES, gold_first_count=0, gold_rate=0)
    campaign.attributes.set([schema["color"], schema["season"]])
    tagging.tag_tasks_build(campaign=campaign, products=[ProductFactory()])
    tagger = user_with_role("tagger")
    _tagging_open(browser, live_server, campaign, tagger)
    task = _state(browser)[1]
    # The key is shown as the others are: on its button and in the key list.
    assert browser.find_element(By.CSS_SELECTOR, "#tag-task [data-zoom-hold] kbd").text == "0"
    assert "hold 0 zoom" in browser.find_element(By.CSS_SELECTOR, ".keys").text

    # A color picked (season is active next), then a season checkbox focused.
    ActionChains(browser).send_keys(OPTION_KEYS[1]).perform()
    browser.execute_script("document.querySelector('fieldset[data-slug=season] input').focus();")
    picked = browser.execute_script(FORM_VALUES_JS)
    assert picked == [f"attr-color={schema['color'].values()[1]}"]
    before = _wait_for(lambda: (m := browser.execute_script(MAIN_IMAGE_JS))["natural"] == [28, 28] and m)
    assert not before["zoomed"]

    ActionChains(browser).key_down("0").perform()
    zoomed = _wait_for(lambda: (m := browser.execute_script(MAIN_IMAGE_JS))["zoomed"] and m)
    assert (zoomed["left"], zoomed["top"]) == (0, 0)
    assert (zoomed["width"], zoomed["height"]) == (zoomed["innerWidth"], zoomed["innerHeight"])
    # object-fit: contain draws the square image as large as the shorter side allows.
    assert min(zoomed["width"], zoomed["height"]) > 1.5 * max(before["width"], before["height"])
    assert zoomed["rendering"] == "pixelated"
    assert zoomed["covered"] == []  # over the whole page, the faded option keys too
    ActionChains(browser).key_up("0").perform()
    after = _wait_for(lambda: not (m := browser.execute_script(MAIN_IMAGE_JS))["zoomed"] and m)
    assert (after["width"], after["height"]) == (before["width"], before["height"])
    assert browser.execute_script(FORM_VALUES_JS) == picked
    assert browser.execute_script("return document.activeElement.checked;") is False

    # The mouse: pressed and held on the button, zoomed; released, not.
    button = browser.find_element(By.CSS_SELECTOR, "#tag-task [data-zoom-hold]")
    ActionChains(browser).click_and_hold(button).perform()
    _wait_for(lambda: browser.execute_script(MAIN_IMAGE_JS)["zoomed"])
    ActionChains(browser).release().perform()
    _wait_for(lambda: not browser.execute_script(MAIN_IMAGE_JS)["zoomed"])
    assert browser.execute_script(FORM_VALUES_JS) == picked

    assert _state(browser)[1] == task and not Answer.objects.exists()
    ActionChains(browser).send_keys(Keys.ENTER).perform()  # season is a multi choice: none is an answer
    _wait_for(lambda: _state(browser)[0] == "done")
    stored = dict(Answer.objects.get().attribute_answers.values_list("attribute__slug", "value"))
    assert stored == {"color": schema["color"].values()[1], "season": ""}


@needs_dataset
@pytest.mark.django_db(transaction=True)
def test_keys_pressed_before_the_swap_settles_still_tag_in_place(live_server, browser):  # noqa: F811
    # htmx attaches itself to a swapped-in form when the swap settles (20 ms by default). Enter in
    # that window used to submit a form htmx did not know yet: the browser posted it as a
    # whole-page load (a rare CI failure of the test above). A 1.5 s settle makes the window wide
    # enough to hit every time.
    from selenium.webdriver.common.action_chains import ActionChains

    campaign, tagger = _tagging_start(live_server, browser, 3)
    browser.execute_script("window.__noReload = 'still here'; htmx.config.defaultSettleDelay = 1500;")
    seen = []
    for i in range(3):
        state, task = _state(browser)
        assert state == "task" and task not in seen
        seen.append(task)
        keys, _ = _keys_for(i, _fields(browser))
        ActionChains(browser).send_keys(*keys).perform()
        _wait_for(lambda: (s := _state(browser)) and (s[0] == "done" or (s[1] and s[1] != seen[-1])))
        assert browser.execute_script("return window.__noReload;") == "still here"
    assert Answer.objects.filter(annotator=tagger, task__campaign=campaign).count() == 3
