"""The verify page on a desktop screen (headless Chromium, viewport 1280 x 900 CSS px): while a
notice shows ("Skipped.", "Undone: answer it again."), the photo, the candidates and every answer
button stay above the fold. The screenshot goes to $FITCHECK_TOUR_DIR/verify-notice.png when that
is set, else to the test's temporary directory."""

import pytest

from ..factories import CampaignFactory, task_with_candidates, user_with_role
from .test_verify_keyboard import (
    CHROMEDRIVER,
    CHROMIUM,
    _current_task,
    _login,
    _page_state,
    _wait_for,
    chrome,
    viewport_set,
)
from .test_verify_phone import tour_path

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]
WIDTH_PX, HEIGHT_PX = 1280, 900
# As long as the demo's (demo_setup): two lines at 1280 px.
INSTRUCTIONS = (
    "Demo data: the catalog holds real Fashion-MNIST product images (Zalando, MIT licence); the customer photos"
    " are generated views of real product images (crop, rotation, lighting, background, occlusion), some of"
    " products that are not in the catalog, and a few photos of no product at all."
)


def _portrait(photo, *, seed: int) -> None:
    """Give `photo` a portrait image (3:4, as a phone takes them) and a caption of two lines: the
    tallest photo the page shows at this width."""
    import io

    import numpy as np
    from PIL import Image

    from catalog.images import image_inspect, image_store

    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 30), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    info = image_inspect(buffer.getvalue())
    photo.image = image_store(buffer.getvalue(), info, prefix="photos")
    photo.sha256 = info.sha256
    photo.caption = "Ready for the weekend thanks to @harbor-pine #lookbook #ootd #weekend #summer #citylife"
    photo.save()


@pytest.fixture
def desktop():
    driver = chrome()
    viewport_set(driver, WIDTH_PX, HEIGHT_PX, mobile=False)
    yield driver
    driver.quit()


# The rects of the answer buttons and of the notice, the viewport, and whether the images loaded.
LAYOUT_JS = """
const rect = el => { const r = el.getBoundingClientRect();
  return {top: r.top, left: r.left, bottom: r.bottom, right: r.right, width: r.width, height: r.height}; };
const all = sel => [...document.querySelectorAll(sel)].map(rect);
const notice = document.querySelector('#task .notice');
return {buttons: all('#task .candidate, #task .rejects button'), photo: all('#task .photo img'),
        notice: notice ? rect(notice) : null, noticeText: notice ? notice.textContent : null,
        innerWidth, innerHeight, scrollY,
        imagesLoaded: [...document.querySelectorAll('.photo img, .candidate img')]
          .every(i => i.complete && i.naturalWidth > 0)};
"""


def _settled(driver) -> bool:
    """Whether htmx has settled its last swap. htmx 2 binds the swapped-in content (hx-post) only
    after its 20 ms settle delay: a key pressed before that submits the new form natively, a full
    page load that drops the notice."""
    return driver.execute_script("return !document.querySelector('.htmx-added, .htmx-settling, .htmx-request');")


def _layout_once(driver, notice: str) -> dict:
    """The page's layout (LAYOUT_JS) once `notice` shows, the swap has settled and the images have
    loaded."""
    return _wait_for(
        lambda: (
            (got := driver.execute_script(LAYOUT_JS))["noticeText"] == notice
            and got["imagesLoaded"]
            and _settled(driver)
            and got
        ),
        describe=lambda: _page_state(driver),
    )


def _assert_above_the_fold(layout: dict) -> None:
    assert (layout["innerWidth"], layout["innerHeight"], layout["scrollY"]) == (WIDTH_PX, HEIGHT_PX, 0)
    assert len(layout["buttons"]) == 6  # three candidates, none / not a product / not fit
    for r in layout["buttons"] + layout["photo"] + [layout["notice"]]:
        assert r["width"] > 0 and r["height"] > 0, r
        assert 0 <= r["top"] and r["bottom"] <= HEIGHT_PX, (layout["noticeText"], r)


@pytest.mark.django_db(transaction=True)
def test_every_answer_button_stays_above_the_fold_while_a_notice_shows(live_server, desktop, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    campaign = CampaignFactory(name="Lunch-break matching", instructions=INSTRUCTIONS)
    for k in (10, 20, 30):
        _portrait(task_with_candidates(campaign, shuffle_key=k).photo, seed=k)
    user_with_role("employee", username="kim", password="kim-password-1")
    first = _login(desktop, live_server, campaign)
    _wait_for(lambda: desktop.execute_script("return !!document.querySelector('#sprint.sprint');"))

    ActionChains(desktop).send_keys("k").perform()
    layout = _layout_once(desktop, "Skipped.")
    second = _current_task(desktop)
    assert second != first
    # Saved first: a failing layout leaves its picture to look at.
    assert desktop.save_screenshot(str(tour_path("verify-notice.png", tmp_path)))
    _assert_above_the_fold(layout)

    # An answer, then z: the notice after undoing it.
    ActionChains(desktop).send_keys("1").perform()
    _wait_for(
        lambda: (t := _current_task(desktop)) and t != second and _settled(desktop),
        describe=lambda: _page_state(desktop),
    )
    ActionChains(desktop).send_keys("z").perform()
    _assert_above_the_fold(_layout_once(desktop, "Undone: answer it again."))
    assert _current_task(desktop) == second
