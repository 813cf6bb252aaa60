"""A lunch-break sprint in a real browser (headless Chromium), by keyboard alone: s starts it, the
answers count up on the sprint bar, the countdown ends in the summary card with the right numbers,
a celebration arrives as an htmx event, c closes the card; never a page reload."""

import time
from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from annotate.models import Answer, ConsensusMethod
from gamify.models import AnswerPoints, BadgeAward, Sprint

from ..factories import CampaignFactory, task_with_candidates, user_with_role
from .test_verify_keyboard import CHROMEDRIVER, CHROMIUM, _current_task, _page_state, _wait_for, browser  # noqa: F401

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (installed by .ci/run)",
    ),
]


def _text(driver, selector: str) -> str | None:
    return driver.execute_script(f"return document.querySelector({selector!r})?.textContent.trim() || null;")


@pytest.mark.django_db(transaction=True)
def test_sprint_by_keyboard_alone(live_server, browser):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    # Every task settles on its one answer (majority vote, overlap 1), so each answer agrees: 10 points.
    campaign = CampaignFactory(
        consensus_method=ConsensusMethod.MAJORITY_VOTE, overlap_min=1, overlap_max=1, min_duration_ms=200
    )
    for k in range(6):
        task_with_candidates(campaign, shuffle_key=10 * (k + 1))
    kim = user_with_role("employee", username="kim", password="kim-password-1")
    BadgeAward.objects.create(user=kim, badge="rescued")  # earned elsewhere, not yet celebrated

    browser.get(f"{live_server.url}/accounts/login/?next=/verify/{campaign.slug}/")
    browser.find_element(By.NAME, "username").send_keys("kim")
    browser.find_element(By.NAME, "password").send_keys("kim-password-1")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait_for(lambda: _current_task(browser))
    _wait_for(lambda: browser.execute_script("return !!document.querySelector('#sprint [data-key=\"s\"]');"))
    browser.execute_script("window.__noReload = 'still here';")

    keys = ActionChains(browser)
    keys.send_keys("s").perform()
    _wait_for(lambda: browser.execute_script("return !!document.querySelector('#sprint.running');"))
    sprint = Sprint.objects.get(user=kim)
    assert sprint.duration_s == 300
    clock = _text(browser, "#sprint-clock")
    assert clock in ("5:00", "4:59", "4:58"), clock

    seen = [_current_task(browser)]
    for i, key in enumerate(("1", "0", "x")):
        time.sleep(0.3)
        ActionChains(browser).send_keys(key).perform()
        seen.append(
            _wait_for(lambda: (t := _current_task(browser)) != seen[-1] and t, describe=lambda: _page_state(browser))
        )
        _wait_for(lambda n=str(i + 1): _text(browser, "#sprint-count") == n, describe=lambda: _page_state(browser))
    # The celebration of the unseen badge arrived with the first answer, as a toast.
    assert "Rescued" in _wait_for(lambda: _text(browser, "#celebrations .celebration.badge"))
    progress = browser.execute_script("return document.getElementById('sprint-progress').value;")
    assert 0 <= progress < 100

    # Fast-forward: the sprint ends a second and a half from now. The next answer's event brings the
    # server's clock to the page, whose countdown then reaches 0 and shows the summary card.
    Sprint.objects.filter(pk=sprint.pk).update(ends_at=timezone.now() + timedelta(seconds=1.5))
    time.sleep(0.3)
    ActionChains(browser).send_keys("1").perform()
    _wait_for(lambda: _text(browser, "#sprint-count") == "4")
    _wait_for(lambda: _text(browser, "#summary-answers"), timeout_s=20)

    answers = Answer.objects.filter(annotator=kim, revoked_at__isnull=True)
    assert answers.count() == 4
    points = AnswerPoints.objects.filter(annotator=kim).aggregate(s=Sum("points"))["s"]
    assert points == 40
    assert _text(browser, "#summary-answers") == "4"
    assert _text(browser, "#summary-accuracy").startswith("100%")
    assert _text(browser, "#summary-points") == "40"
    assert _text(browser, "#summary-rank").startswith("#1")
    # Two of the four picked a product (keys 1): their photos are on the card, confirmed.
    assert browser.execute_script("return document.querySelectorAll('.sprint-photos img.confirmed').length;") == 2

    ActionChains(browser).send_keys("c").perform()
    _wait_for(lambda: browser.execute_script("return !!document.querySelector('#sprint.idle');"))
    assert browser.execute_script("return window.__noReload;") == "still here"
