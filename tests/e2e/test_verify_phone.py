"""The verify page on a phone (headless Chromium at 400 x 800 CSS px): the photo, the three
candidates and the answer buttons fit one screen without scrolling, and nothing, the top bar
included, overflows sideways. The screenshot goes to $FITCHECK_TOUR_DIR/verify-phone.png when that is
set (`make tour` sets it to docs/tour/), else to the test's temporary directory."""

import os
from pathlib import Path

import pytest

from ..factories import CampaignFactory, task_with_candidates, user_with_role
from .test_verify_keyboard import CHROMEDRIVER, CHROMIUM, _current_task, _wait_for, chrome, viewport_set

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]
WIDTH_PX, HEIGHT_PX = 400, 800


def tour_path(name: str, tmp_path: Path) -> Path:
    """Where an e2e test saves screenshot `name`: $FITCHECK_TOUR_DIR (docs/tour/ under `make tour`)
    or the test's own temporary directory, so a plain test run leaves the checkout as it was."""
    directory = Path(os.environ.get("FITCHECK_TOUR_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


@pytest.fixture
def phone():
    driver = chrome()
    # 400 x 800 CSS px, as a phone in portrait; a page that overflows widens it (innerWidth > 400).
    viewport_set(driver, WIDTH_PX, HEIGHT_PX, mobile=True)
    yield driver
    driver.quit()


# The rects of what must be on screen, and everything wider than the viewport. One script call.
LAYOUT_JS = """
const rect = el => { const r = el.getBoundingClientRect();
  return {top: r.top, left: r.left, bottom: r.bottom, right: r.right, width: r.width, height: r.height}; };
const wanted = ['.photo img', '.candidate', '.rejects button', '.skip button', '.topbar'];
const rects = {};
for (const sel of wanted) rects[sel] = [...document.querySelectorAll(sel)].map(rect);
const wide = [...document.querySelectorAll('body *')].filter(el => {
  const r = el.getBoundingClientRect();
  return r.width > 0 && (r.right > innerWidth + 0.5 || r.left < -0.5) && getComputedStyle(el).position !== 'fixed'
    && !el.closest('.prefetch');
}).map(el => el.tagName + '.' + el.className);
return {rects, wide, innerWidth, innerHeight, scrollWidth: document.documentElement.scrollWidth,
        imagesLoaded: [...document.querySelectorAll('.photo img, .candidate img')]
          .every(i => i.complete && i.naturalWidth > 0)};
"""


@pytest.mark.django_db(transaction=True)
def test_the_verify_page_fits_a_phone_screen(live_server, phone, tmp_path):
    from selenium.webdriver.common.by import By

    campaign = CampaignFactory(name="Lunch-break matching", instructions="Pick the product the photo shows.")
    tasks = [task_with_candidates(campaign, shuffle_key=k) for k in (10, 20)]
    user_with_role("employee", username="kim-with-a-long-name", password="kim-password-1")

    phone.get(f"{live_server.url}/accounts/login/?next=/verify/{campaign.slug}/")
    phone.find_element(By.NAME, "username").send_keys("kim-with-a-long-name")
    phone.find_element(By.NAME, "password").send_keys("kim-password-1")
    phone.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert _wait_for(lambda: _current_task(phone)) in {str(t.uuid) for t in tasks}
    _wait_for(lambda: phone.execute_script("return !!document.querySelector('#sprint.sprint');"))
    layout = _wait_for(lambda: (got := phone.execute_script(LAYOUT_JS))["imagesLoaded"] and got)

    # Saved first: a failing layout leaves its picture to look at.
    assert phone.save_screenshot(str(tour_path("verify-phone.png", tmp_path)))
    assert (layout["innerWidth"], layout["innerHeight"]) == (WIDTH_PX, HEIGHT_PX)
    assert layout["scrollWidth"] <= WIDTH_PX, layout["wide"]
    assert layout["wide"] == []
    rects = layout["rects"]
    assert len(rects[".candidate"]) == 3 and len(rects[".rejects button"]) == 3 and len(rects[".photo img"]) == 1
    for selector in (".photo img", ".candidate", ".rejects button", ".skip button", ".topbar"):
        for r in rects[selector]:
            assert r["width"] > 0 and r["height"] > 0, selector
            assert 0 <= r["left"] and r["right"] <= WIDTH_PX, (selector, r)
            assert 0 <= r["top"] and r["bottom"] <= HEIGHT_PX, (selector, r)  # on the first screen, no scrolling
    # Big enough to judge and to tap: a candidate's image and the photo are not thumbnails.
    assert min(r["width"] for r in rects[".candidate"]) >= 100
    assert rects[".photo img"][0]["height"] >= 180
    assert min(r["height"] for r in rects[".rejects button"]) >= 36
