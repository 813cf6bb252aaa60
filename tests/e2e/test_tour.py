"""The walkthrough's screenshots (docs/tour.md): what each demo role sees, on a small demo built by
`manage.py demo_setup` from the real Fashion-MNIST files, in headless Chromium at 1280 px.

Each page is checked for the parts a person needs before its picture is kept. Pictures go to
$FITCHECK_TOUR_DIR (`make tour` sets docs/tour/) or to the test's temporary directory."""

from io import StringIO

import pytest
from django.core.management import call_command

from annotate.models import Campaign, GuideRead
from catalog import demo_data

from .test_tag_keyboard import DATASET_DIR
from .test_verify_keyboard import CHROMEDRIVER, CHROMIUM, _wait_for, chrome
from .test_verify_phone import tour_path

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
    pytest.mark.skipif(
        not all((DATASET_DIR / name).is_file() for name in demo_data.FILES),
        reason="Debian package dataset-fashion-mnist is not installed",
    ),
]
PASSWORD = "fitcheck-demo"  # demo_setup's


def _login(driver, base: str, username: str, next_path: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{base}/accounts/login/?next={next_path}")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def _has(driver, selector: str) -> bool:
    return bool(driver.execute_script("return !!document.querySelector(arguments[0]);", selector))


# What sticks out of the right edge of its card, unless an element that scrolls sideways holds it.
SPILLS = """
const out = [];
for (const card of document.querySelectorAll('.card')) {
  const edge = card.getBoundingClientRect().right + 1;
  for (const el of card.querySelectorAll('*')) {
    let scrolls = false;
    for (let up = el.parentElement; up && up !== card; up = up.parentElement) {
      if (['auto', 'scroll'].includes(getComputedStyle(up).overflowX)) { scrolls = true; break; }
    }
    if (!scrolls && el.getClientRects().length && el.getBoundingClientRect().right > edge) {
      out.push(el.tagName + ' ' + (el.textContent || '').trim().slice(0, 40));
    }
  }
}
return out;
"""


def _answers_by_three_employees(campaign, count: int = 3) -> None:
    """A few answers each by alice, bob and carol, so the annotators table has rows (and buttons)."""
    from django.contrib.auth import get_user_model

    from annotate import services

    for username in ("alice", "bob", "carol"):
        user = get_user_model().objects.get(username=username)
        for i in range(count):
            task = services.task_next_for(user=user, campaign=campaign, seed=i)
            if task is None:
                break
            services.answer_submit(
                user=user, task=task, choice="none", duration_ms=2500, idempotency_key=f"tour-{username}-{i}"
            )


@pytest.mark.django_db(transaction=True)
def test_each_role_sees_its_pages(live_server, settings, tmp_path, django_capture_on_commit_callbacks):
    settings.FITCHECK_MATCH_PRETRAIN = False  # the CNN's training is not what these pictures show
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "demo_setup", stdout=StringIO(), stderr=StringIO(), products=60, photos=8, photos_not_in_catalog=2,
            photos_non_product=1, image_size=32, gold=2, tag_products=20,
        )
    tagging = Campaign.objects.get(slug="catalog-tagging")
    from django.contrib.auth import get_user_model

    GuideRead.objects.get_or_create(campaign=tagging, user=get_user_model().objects.get(username="tara"))
    with django_capture_on_commit_callbacks(execute=True):
        _answers_by_three_employees(Campaign.objects.get(slug="lunch-verify"))

    driver = chrome()
    driver.set_window_size(1280, 900)
    pages = [
        # (user, path, what must be on the page, picture)
        ("alice", "/verify/lunch-verify/", "#task .candidate img", "verify.png"),
        ("tara", "/tag/catalog-tagging/", "#tag-task fieldset.attr", "tag.png"),
        ("mila", "/learning/", "main table", "models.png"),
        ("mila", "/exports/", "main form", "exports.png"),
        ("admin", "/campaigns/lunch-verify/annotators/", "main table button", "annotators.png"),
        ("admin", "/campaigns/catalog-tagging/agreement/", "main h1", "agreement.png"),
    ]
    try:
        for username, path, selector, picture in pages:
            _login(driver, live_server.url, username, path)
            # On the page asked for, not still on the login page (whose form matches "main form").
            _wait_for(
                lambda selector=selector, path=path: driver.execute_script("return location.pathname;") == path
                and _has(driver, selector),
                describe=lambda: driver.page_source[:2000],
            )
            if selector.endswith("img"):  # the pictures themselves, not broken-image boxes
                _wait_for(lambda: driver.execute_script(
                    "return [...document.querySelectorAll('#task img')].every(i => i.complete && i.naturalWidth > 0);"
                ))
            assert "Traceback" not in driver.page_source and "Server Error" not in driver.title
            # Nothing spills out of its card at 1280 px (the annotators' Pause buttons did).
            assert driver.execute_script(SPILLS) == [], path
            assert driver.save_screenshot(str(tour_path(picture, tmp_path)))
    finally:
        driver.quit()
