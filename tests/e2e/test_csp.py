"""The main pages under the Content-Security-Policy (config/settings.py) in headless Chromium: every
page, and the htmx swaps on it, run with no violation reported, while the policy is enforced (an
inline style added on purpose is reported)."""

import pytest

from annotate import tagging
from annotate.models import Campaign, ExportSnapshot, GuideRead
from catalog.attribute_schema import attribute_schema_ensure
from catalog.models import TaxonomyNode
from catalog.services import taxonomy_path_ensure

from ..factories import CampaignFactory, ProductFactory, task_with_candidates, user_with_role
from .test_verify_keyboard import CHROMEDRIVER, CHROMIUM, _wait_for, chrome

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]

# Runs before any script of each new document: CSP violations are DOM events, which page scripts
# could miss if they load late. (Scripts injected through DevTools are not subject to the policy.)
RECORDER = """window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.effectiveDirective + ' blocked ' + (e.blockedURI || 'inline')
    + ' at ' + e.sourceFile + ':' + e.lineNumber);
});"""


@pytest.fixture
def browser():
    driver = chrome(browser_log=True)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORDER})
    yield driver
    driver.quit()


def _violations(driver) -> list[str]:
    recorded = driver.execute_script("return window.__csp || [];")
    console = [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]
    return recorded + console


def _campaigns():
    match = CampaignFactory(slug="lunch", overlap_min=1, overlap_max=1, min_duration_ms=0)
    for k in range(4):
        task_with_candidates(match, shuffle_key=10 * (k + 1))
    CampaignFactory(slug="dinner")  # a second match campaign: the announce page offers a choice
    taxonomy_path_ensure(path="Clothing › Dresses › Dress")
    schema = {a.slug: a for a in attribute_schema_ensure()}
    tags = CampaignFactory(
        slug="tagging",
        kind=Campaign.Kind.ATTRIBUTES,
        guide="# Guide\n\nTag what you **see**.",
        gold_rate=0,
        gold_first_count=0,
        overlap_min=1,
        overlap_max=1,
    )
    tags.attributes.set([schema["color"], schema["pattern"]])
    dress = TaxonomyNode.objects.get(path="Clothing › Dresses › Dress")
    tagging.tag_tasks_build(campaign=tags, products=[ProductFactory(master_category=dress) for _ in range(2)])
    return match, tags


@pytest.mark.django_db(transaction=True)
def test_the_main_pages_report_no_csp_violation(live_server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    match, tags = _campaigns()
    user = user_with_role("admin", username="root", password="root-password-1")
    for role in ("employee", "tagger", "ml"):
        user.groups.add(user_with_role(role).groups.get())
    GuideRead.objects.create(campaign=tags, user=user)
    snapshot = ExportSnapshot.objects.create(name="csp", version=1, schema_version=1, formats=["jsonl"])

    browser.get(f"{live_server.url}/accounts/login/?next=/verify/{match.slug}/")
    browser.find_element(By.NAME, "username").send_keys("root")
    browser.find_element(By.NAME, "password").send_keys("root-password-1")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    found = {}

    # verify: answer by key (an htmx swap), then start a sprint (another)
    task = "return document.querySelector('#task input[name=\"task\"]')?.value || null;"
    first = _wait_for(lambda: browser.execute_script(task))
    ActionChains(browser).send_keys("0").perform()
    _wait_for(lambda: (t := browser.execute_script(task)) and t != first)
    ActionChains(browser).send_keys("s").perform()
    _wait_for(lambda: browser.execute_script("return !!document.querySelector('#sprint.running');"))
    found["verify + sprint"] = _violations(browser)

    pages = {
        "home": "/",
        "tag guide": f"/tag/{tags.slug}/guide/",
        "tag": f"/tag/{tags.slug}/",
        "stats": "/me/stats/",
        "leaderboard": "/leaderboard/",
        "impact": "/me/impact/",
        "announce": f"/announce/?campaign={match.slug}",
        "exports": "/exports/",
        "export detail": f"/exports/{snapshot.uuid}/",
        "learning": "/learning/",
        "agreement": f"/campaigns/{tags.slug}/agreement/",
        "annotators": f"/campaigns/{match.slug}/annotators/",
        "api docs": "/api/docs/",
        "admin": "/admin/",
    }
    for name, path in pages.items():
        browser.get(live_server.url + path)
        _wait_for(lambda: browser.execute_script("return document.readyState === 'complete';"))
        assert "Server Error" not in browser.title and "Forbidden" not in browser.page_source[:2000], name
        if name == "tag":
            _wait_for(lambda: browser.execute_script("return !!document.querySelector('#tag-task');"))
        if name == "announce":  # the campaign select submits its form by itself (app.js, no onchange="")
            from selenium.webdriver.support.select import Select

            Select(browser.find_element(By.NAME, "campaign")).select_by_value("dinner")
            _wait_for(lambda: "campaign=dinner" in browser.current_url)
        if name == "api docs":
            _wait_for(lambda: browser.execute_script("return !!document.querySelector('.swagger-ui .info');"))
        found[name] = _violations(browser)

    assert {name: v for name, v in found.items() if v} == {}

    # The policy is enforced, not just sent: an inline style is refused and reported.
    browser.execute_script("document.body.insertAdjacentHTML('beforeend', '<p id=canary style=\"color: red\">x</p>');")
    _wait_for(lambda: browser.execute_script("return window.__csp.length > 0;"))
    assert any("style-src" in v for v in browser.execute_script("return window.__csp;"))
