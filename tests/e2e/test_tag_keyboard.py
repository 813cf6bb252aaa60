"""The tagging page in a real browser (headless Chromium): a tagger is sent to the guide first, then
tags 20 products by keyboard alone, each bringing the next product without a page reload."""

import pytest

from annotate import tagging
from annotate.models import Answer, Campaign, GuideRead
from catalog.attribute_schema import attribute_schema_ensure
from catalog.services import taxonomy_path_ensure

from ..factories import CampaignFactory, ProductFactory, user_with_role
from .test_verify_keyboard import CHROMEDRIVER, CHROMIUM, _wait_for, browser  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]

PRODUCT_COUNT = 20
OPTION_KEYS = "123456789abcdefhijklmnopqrstuvwxyz"  # as annotate.tag_views.OPTION_KEYS: no g


def _state(driver) -> tuple[str | None, str | None]:
    # One script call: htmx may swap the node between a find and a read.
    return tuple(
        driver.execute_script(
            """const s = document.getElementById('tag-task');
               return [s ? s.dataset.state : null, s ? (s.dataset.task || null) : null];"""
        )
    )


def _keys_for(i: int, values: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """The keys a tagger presses for the i-th product, and the values they mean."""
    from selenium.webdriver.common.keys import Keys

    color, pattern, persona = i % len(values["color"]), (i * 3) % len(values["pattern"]), i % 5
    season = sorted({i % 4, (i + 1) % 4} if i % 3 else {i % 4})
    keys = [OPTION_KEYS[color]]  # single choice: picks, then pattern is active
    if i == 0:
        # A slip: back to color, clear it, pick again.
        keys = [OPTION_KEYS[(color + 1) % 9], Keys.ARROW_LEFT, Keys.BACKSPACE, OPTION_KEYS[color]]
    keys += [OPTION_KEYS[pattern]]  # then season (multi choice) is active
    keys += [OPTION_KEYS[s] for s in season] + [Keys.TAB]  # toggle, then move on
    keys += [OPTION_KEYS[persona], Keys.ENTER]
    expected = {
        "color": values["color"][color],
        "pattern": values["pattern"][pattern],
        "season": "|".join(values["season"][s] for s in season),
        "persona_boho": values["persona_boho"][persona],
    }
    return keys, expected


@pytest.mark.django_db(transaction=True)
def test_a_tagger_reads_the_guide_then_tags_twenty_products_by_keyboard(live_server, browser):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    sandal = taxonomy_path_ensure(path="Shoes › Sandal")
    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(
        slug="tagging",
        name="Catalog tagging",
        kind=Campaign.Kind.ATTRIBUTES,
        guide="# Guide\n\nTag what you see.",
        gold_first_count=0,
        gold_rate=0,
    )
    slugs = ["color", "pattern", "season", "persona_boho"]
    campaign.attributes.set([schema[s] for s in slugs])
    tagging.tag_tasks_build(
        campaign=campaign, products=[ProductFactory(master_category=sandal) for _ in range(PRODUCT_COUNT)]
    )
    values = {s: schema[s].values() for s in slugs}
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
    # A marker that a full page load would wipe out.
    browser.execute_script("window.__noReload = 'still here';")

    # Enter with attributes unanswered submits nothing and says what is missing.
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    hint = browser.execute_script("return document.querySelector('#tag-task .tag-hint').textContent;")
    assert "Answer every attribute first" in hint and "Color" in hint
    assert not Answer.objects.exists()

    expected_by_task, seen = {}, []
    for i in range(PRODUCT_COUNT):
        state, task = _state(browser)
        assert state == "task" and task not in seen
        seen.append(task)
        keys, expected_by_task[task] = _keys_for(i, values)
        ActionChains(browser).send_keys(*keys).perform()
        _wait_for(lambda: (s := _state(browser)) and (s[0] == "done" or (s[1] and s[1] != seen[-1])))

    assert _state(browser)[0] == "done"
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
