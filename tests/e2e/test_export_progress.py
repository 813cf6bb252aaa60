"""The export page in a real browser: a queued snapshot's page polls, and shows the files once the
build is done, without a reload."""

import pytest

from annotate.exports import services as exports
from annotate.models import ExportSnapshot

from ..factories import CampaignFactory, task_with_candidates, user_with_role
from .test_verify_keyboard import CHROMEDRIVER, CHROMIUM, _wait_for, browser  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]


def _progress_text(driver) -> str:
    # One script call: htmx swaps the node every second, so a find then a read can go stale.
    return driver.execute_script("return document.getElementById('export-progress')?.innerText || '';")


@pytest.mark.django_db(transaction=True)
def test_a_queued_export_page_shows_its_files_when_the_build_ends(live_server, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    campaign = CampaignFactory(overlap_min=1, overlap_max=1, confidence_target=0.5)
    task = task_with_candidates(campaign)
    task.status, task.label, task.confidence = "complete", "none", 0.9
    task.save()
    user_with_role("ml", username="mia", password="mia-password-1")
    # Not queued: the test plays the worker below.
    snapshot = ExportSnapshot.objects.create(name="e2e", version=1, schema_version=1, formats=["jsonl"])

    browser.get(f"{live_server.url}/accounts/login/?next=/exports/{snapshot.uuid}/")
    browser.find_element(By.NAME, "username").send_keys("mia")
    browser.find_element(By.NAME, "password").send_keys("mia-password-1")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait_for(lambda: "Queued" in _progress_text(browser))
    browser.execute_script("window.__noReload = 'still here';")

    exports.export_build(snapshot_id=snapshot.pk)
    _wait_for(lambda: "jsonl/items.jsonl" in _progress_text(browser), timeout_s=10)
    assert browser.execute_script("return window.__noReload;") == "still here"
    link = browser.execute_script("return document.querySelector('#export-progress td a').href;")
    assert link.endswith(f"/exports/{snapshot.uuid}/files/jsonl/items.jsonl")
    everything = browser.execute_script("return document.querySelector('#export-progress a.button').href;")
    assert everything.endswith(f"/exports/{snapshot.uuid}/download.zip")
