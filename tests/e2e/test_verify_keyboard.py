"""The verify page in a real browser (headless Chromium): answers by keyboard alone, each bringing
the next task without a page reload; undo brings the last task back."""

import shutil
import time

import pytest

from annotate.models import Answer

from ..factories import CampaignFactory, task_with_candidates, user_with_role

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (installed by .ci/run)",
    ),
]


def chrome(*, browser_log: bool = False):
    """A headless Chromium driver (Debian's chromium and chromedriver), 1200x900, 30 s page loads;
    with `browser_log`, the console log kept for driver.get_log("browser"). The caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    if browser_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def viewport_set(driver, width_px: int, height_px: int, *, mobile: bool) -> None:
    """Emulate a viewport of width_px x height_px CSS px at scale 1: the viewport itself, not the
    window (whose size would include browser chrome). As a mobile browser (`mobile`), Chromium
    widens the layout viewport to fit a page that overflows."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width_px, "height": height_px, "deviceScaleFactor": 1, "mobile": mobile},
    )


@pytest.fixture
def browser():
    driver = chrome()
    yield driver
    driver.quit()


def _current_task(driver) -> str | None:
    # One script call: htmx may swap the node between a find and a read.
    return driver.execute_script("""return document.querySelector('#task input[name="task"]')?.value || null;""")


def _wait_for(predicate, timeout_s: float = 15.0, describe=None):
    """predicate()'s first truthy value, polled every 50 ms; on timeout an AssertionError that
    carries describe()'s account of the page, when given (a rare CI failure left nothing to read)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page" + (f": {describe()}" if describe else ""))


def _page_state(driver) -> str:
    """What a stuck keyboard test needs to know: the task on screen, its notice, whether its buttons
    are disabled, what has focus, and the answers stored."""
    state = driver.execute_script(
        """const t = document.getElementById('task');
        return {state: t && t.dataset.state, shownAt: t && t.dataset.shownAt,
                task: document.querySelector('#task input[name="task"]')?.value,
                notice: document.querySelector('#task .notice')?.textContent,
                disabled: [...document.querySelectorAll('#task button')].filter(b => b.disabled).length,
                buttons: document.querySelectorAll('#task button').length,
                active: document.activeElement && document.activeElement.outerHTML.slice(0, 80),
                requests: document.querySelectorAll('.htmx-request').length};"""
    )
    answers = list(Answer.objects.order_by("created_at").values_list("task__uuid", "choice", "duration_ms"))
    return f"page {state}; answers {answers}"


@pytest.mark.django_db(transaction=True)
def test_three_answers_by_keyboard_without_a_reload(live_server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    campaign = CampaignFactory()
    tasks = [task_with_candidates(campaign, shuffle_key=k) for k in (10, 20, 30, 40)]
    user_with_role("employee", username="kim", password="kim-password-1")

    browser.get(f"{live_server.url}/accounts/login/?next=/verify/{campaign.slug}/")
    browser.find_element(By.NAME, "username").send_keys("kim")
    browser.find_element(By.NAME, "password").send_keys("kim-password-1")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait_for(lambda: _current_task(browser))
    # A marker that a full page load would wipe out.
    browser.execute_script("window.__noReload = 'still here';")

    seen = [_current_task(browser)]
    for i, key in enumerate(("1", "0", "x")):
        time.sleep(0.3)  # a human-ish pause, so duration_ms is measurable
        if i == 0:
            # Another swap on the page (the sprint bar loading, a toast) must not restart the clock.
            browser.execute_script("htmx.ajax('GET', location.pathname, {target: '#sprint', swap: 'none'});")
            time.sleep(0.2)
        ActionChains(browser).send_keys(key).perform()
        seen.append(
            _wait_for(lambda: (t := _current_task(browser)) != seen[-1] and t, describe=lambda: _page_state(browser))
        )

    assert browser.execute_script("return window.__noReload;") == "still here"
    assert len(set(seen)) == 4 and set(seen) <= {str(t.uuid) for t in tasks}
    answers = list(Answer.objects.order_by("created_at"))
    assert [a.choice for a in answers] == ["product", "none", "not_a_product"]
    assert [str(a.task.uuid) for a in answers] == seen[:3]
    assert answers[0].product == answers[0].task.candidates.get(rank=1).product
    assert all(a.duration_ms >= 250 for a in answers)
    assert answers[0].duration_ms >= 400  # a restarted clock would give about 200

    # z: the last answer is undone and its task is back on screen.
    ActionChains(browser).send_keys("z").perform()
    _wait_for(lambda: _current_task(browser) == seen[2])
    assert Answer.objects.get(task__uuid=seen[2]).revoked_at is not None
    assert browser.execute_script("return window.__noReload;") == "still here"


@pytest.mark.django_db(transaction=True)
def test_a_photo_without_suggestions_is_answered_by_keyboard(live_server, browser):
    """A photo whose suggestions a matching head withheld: the number keys do nothing, x answers
    "not a product" and brings the next task without a reload."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from annotate.models import Task
    from mlcore.models import ModelVersion

    campaign = CampaignFactory()
    head = ModelVersion.objects.create(
        name="head-strict",
        kind=ModelVersion.Kind.MATCHING,
        scope="matching:lunch",
        backbone="synthetic",
        image_size_px=32,
        embedding_dim=8,
    )
    withheld = task_with_candidates(campaign, shuffle_key=10)
    withheld.candidates.all().delete()
    Task.objects.filter(pk=withheld.pk).update(suggestions_withheld_by=head)
    user_with_role("employee", username="kim", password="kim-password-1")

    browser.get(f"{live_server.url}/accounts/login/?next=/verify/{campaign.slug}/")
    browser.find_element(By.NAME, "username").send_keys("kim")
    browser.find_element(By.NAME, "password").send_keys("kim-password-1")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert _wait_for(lambda: _current_task(browser)) == str(withheld.uuid)
    assert "found no catalog product" in browser.find_element(By.ID, "task").text
    following = task_with_candidates(campaign, shuffle_key=20)
    browser.execute_script("window.__noReload = 'still here';")

    ActionChains(browser).send_keys("1").perform()  # no candidate to pick: nothing happens
    time.sleep(0.8)
    assert _current_task(browser) == str(withheld.uuid) and not Answer.objects.exists()
    ActionChains(browser).send_keys("x").perform()
    _wait_for(lambda: _current_task(browser) == str(following.uuid))
    answer = Answer.objects.get()
    assert (answer.task_id, answer.choice, answer.product) == (withheld.pk, "not_a_product", None)
    assert browser.execute_script("return window.__noReload;") == "still here"


def _login(driver, live_server, campaign, username="kim", password="kim-password-1"):
    from selenium.webdriver.common.by import By

    driver.get(f"{live_server.url}/accounts/login/?next=/verify/{campaign.slug}/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    return _wait_for(lambda: _current_task(driver))


@pytest.mark.django_db(transaction=True)
def test_k_skips_to_the_next_task_and_space_held_zooms(live_server, browser):
    """k: the task's lease is released, no answer is stored and the next task shows without a
    reload; the skipped task comes back only after the others. Space held: the photo and the
    candidates side by side at full size, pixelated; let go, the page returns."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from annotate.models import Lease, Skip

    campaign = CampaignFactory()
    tasks = [task_with_candidates(campaign, shuffle_key=k) for k in (10, 20)]
    user_with_role("employee", username="kim", password="kim-password-1")
    first = _login(browser, live_server, campaign)
    browser.execute_script("window.__noReload = 'still here';")
    # A 1200 px window shows the candidates' images well above the old 145 px.
    widths = browser.execute_script(
        "return [...document.querySelectorAll('#task .candidate img')].map(i => i.getBoundingClientRect().width);"
    )
    assert len(widths) == 3 and min(widths) >= 180

    # Space held: zoomed, four images side by side, each far wider than a 145 px candidate.
    ActionChains(browser).key_down(Keys.SPACE).perform()
    zoomed = _wait_for(
        lambda: browser.execute_script(
            """const t = document.getElementById('task');
            if (!t.classList.contains('zoomed')) return null;
            return [...t.querySelectorAll('.photo img, .candidate img')].map(i => {
              const r = i.getBoundingClientRect();
              return [r.left, r.top, r.width, r.height, getComputedStyle(i).imageRendering]; });"""
        )
    )
    assert len(zoomed) == 4
    assert max(z[1] for z in zoomed) - min(z[1] for z in zoomed) < 4  # one row
    assert sorted(z[0] for z in zoomed) == [z[0] for z in zoomed]  # photo, then candidates 1, 2, 3
    assert all(z[2] >= 250 and z[3] >= 250 and z[4] == "pixelated" for z in zoomed)
    ActionChains(browser).key_up(Keys.SPACE).perform()
    _wait_for(
        lambda: not browser.execute_script("return document.getElementById('task').classList.contains('zoomed');")
    )
    assert _current_task(browser) == first and not Answer.objects.exists()

    ActionChains(browser).send_keys("k").perform()
    second = _wait_for(lambda: (t := _current_task(browser)) != first and t, describe=lambda: _page_state(browser))
    assert {first, second} == {str(t.uuid) for t in tasks}
    assert not Answer.objects.exists()
    assert Skip.objects.filter(task__uuid=first).exists()
    assert not Lease.objects.filter(task__uuid=first).exists()
    assert "Skipped." in browser.find_element("id", "task").text
    # Answering the other task brings the skipped one back: nothing else is left.
    ActionChains(browser).send_keys("1").perform()
    _wait_for(lambda: _current_task(browser) == first, describe=lambda: _page_state(browser))
    assert browser.execute_script("return window.__noReload;") == "still here"


@pytest.mark.django_db(transaction=True)
def test_a_key_pressed_before_the_swap_settles_still_answers_in_place(live_server, browser):
    # htmx attaches itself to swapped-in content when the swap settles (20 ms by default). A key in
    # that window used to click a button htmx did not know yet: the browser posted the form as a
    # whole-page load (a rare CI failure of the tagging test). A 1.5 s settle makes the window
    # wide enough to hit every time.
    from selenium.webdriver.common.action_chains import ActionChains

    campaign = CampaignFactory()
    tasks = [task_with_candidates(campaign, shuffle_key=k) for k in (10, 20, 30)]
    user_with_role("employee", username="kim", password="kim-password-1")
    seen = [_login(browser, live_server, campaign)]
    browser.execute_script("window.__noReload = 'still here'; htmx.config.defaultSettleDelay = 1500;")

    for key in ("1", "0"):
        ActionChains(browser).send_keys(key).perform()
        seen.append(
            _wait_for(lambda: (t := _current_task(browser)) != seen[-1] and t, describe=lambda: _page_state(browser))
        )
        assert browser.execute_script("return window.__noReload;") == "still here"
        # The new task is in the page, htmx has not processed it yet.
        assert browser.execute_script("return !!document.querySelector('#task.htmx-added, #task .htmx-added');")

    assert set(seen) == {str(t.uuid) for t in tasks}
    assert [a.choice for a in Answer.objects.order_by("created_at")] == ["product", "none"]
