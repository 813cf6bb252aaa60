"""label_studio_import: images only from MEDIA_ROOT, an images_root inside FITCHECK_IMPORT_ROOTS or
public URLs (issue 14 item 5), and lead_time values that are no sane number of seconds (item 7)."""

import json

import pytest

from annotate.exports.label_studio import LabelStudioFileInvalid, label_studio_import
from annotate.models import Answer, Task
from annotate.services import MAX_DURATION_MS
from catalog.models import Photo

from ..factories import CampaignFactory, png, task_with_candidates

pytestmark = pytest.mark.django_db

REFUSED = "does not exist or is outside FITCHECK_IMPORT_ROOTS"


@pytest.fixture
def target(db):
    return CampaignFactory(slug="target", gold_first_count=0, gold_rate=0)


@pytest.fixture
def make_task(db, settings):
    """Label Studio tasks for photos of one source task, whose candidates are in the catalog."""
    source = task_with_candidates(CampaignFactory(slug="elsewhere"))
    candidates = [
        {"rank": c.rank, "sku": c.product.sku, "retailer": c.product.retailer.slug}
        for c in source.candidates.select_related("product__retailer")
    ]

    def make(image: str, **annotation) -> dict:
        return {
            "data": {"image": image, "candidates": candidates},
            "annotations": [
                {
                    "id": 1,
                    "completed_by": 7,
                    "lead_time": 2.5,
                    "result": [{"from_name": "match", "type": "choices", "value": {"choices": ["2"]}}],
                    **annotation,
                }
            ],
        }

    make.media_image = settings.MEDIA_URL + source.photo.image.name
    return make


def _write(tmp_path, items) -> object:
    path = tmp_path / "ls.json"
    path.write_text(items if isinstance(items, str) else json.dumps(items))
    return path


@pytest.fixture
def outside(tmp_path, settings):
    """A real PNG next to MEDIA_ROOT and outside every import root."""
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "secret.png").write_bytes(png(seed=9090))
    settings.FITCHECK_IMPORT_ROOTS = [tmp_path / "import"]
    return folder / "secret.png"


# -- images ----------------------------------------------------------------------------------------


def test_media_urls_cannot_climb_out_of_media_root(target, make_task, tmp_path, outside, settings):
    assert settings.MEDIA_ROOT == tmp_path / "media"
    items = [
        make_task("/media/../private/secret.png"),
        make_task("/media/%2e%2e/private/secret.png"),
        make_task(f"/media/{outside}"),  # "/media//tmp/…/secret.png"
        make_task(f"{settings.FITCHECK_PUBLIC_URL}/media/../private/secret.png"),
        make_task(make_task.media_image),  # the server's own media: imported
    ]
    report = label_studio_import(campaign=target, path=_write(tmp_path, items))
    assert [position for position, _ in report.errors] == [1, 2, 3, 4]
    assert all(REFUSED in reason for _, reason in report.errors)
    assert report.task_created_count == 1
    assert not Photo.objects.filter(source="label-studio import").exclude(tasks__campaign=target).exists()


def test_a_symlink_in_media_root_pointing_out_is_refused(target, make_task, tmp_path, outside, settings):
    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    (settings.MEDIA_ROOT / "leak.png").symlink_to(outside)
    report = label_studio_import(campaign=target, path=_write(tmp_path, [make_task("/media/leak.png")]))
    assert len(report.errors) == 1 and REFUSED in report.errors[0][1]
    assert not Task.objects.filter(campaign=target).exists()


def test_images_root_paths_stay_inside_it(target, make_task, tmp_path, outside, settings):
    root = tmp_path / "import" / "ls"
    (root / "upload").mkdir(parents=True)
    (root / "upload" / "ok.png").write_bytes(png(seed=4242))
    (root / "upload" / "leak.png").symlink_to(outside)
    items = [
        make_task("/data/upload/../../../private/secret.png"),
        make_task(f"/data/local-files/?d={outside}"),
        make_task("/data/upload/leak.png"),
        make_task("/data/upload/ok.png"),
    ]
    report = label_studio_import(campaign=target, path=_write(tmp_path, items), images_root=root)
    assert [position for position, _ in report.errors] == [1, 2, 3]
    assert all(REFUSED in reason for _, reason in report.errors)
    assert report.task_created_count == 1


def test_an_images_root_outside_the_import_roots_is_refused(target, make_task, tmp_path, outside):
    with pytest.raises(LabelStudioFileInvalid, match="not inside FITCHECK_IMPORT_ROOTS"):
        label_studio_import(
            campaign=target, path=_write(tmp_path, [make_task("/data/upload/x.png")]), images_root=outside.parent
        )
    assert not Task.objects.filter(campaign=target).exists()


def test_a_url_to_a_private_address_is_refused(target, make_task, tmp_path, settings):
    settings.FITCHECK_IMPORT_ALLOW_PRIVATE_URLS = False
    items = [make_task("http://127.0.0.1:9/x.png"), make_task("http://2130706433/x.png")]
    report = label_studio_import(campaign=target, path=_write(tmp_path, items))
    assert [p for p, _ in report.errors] == [1, 2]
    assert all("not reachable, or not allowed" in reason for _, reason in report.errors)


# -- lead_time ---------------------------------------------------------------------------------------


def test_lead_times_that_are_no_number_are_reported_and_nothing_of_that_task_is_written(
    target, make_task, tmp_path
):
    image = make_task.media_image
    items = [
        make_task(image, lead_time="abc"),
        make_task(image, lead_time=True),
        make_task(image, lead_time=-1),
        make_task(image, lead_time="nan"),
        make_task(image, lead_time="<inf>"),
    ]
    # JSON's 1e400 is read as infinity by Python's json module.
    payload = json.dumps(items).replace('"<inf>"', "1e400")
    photos_before = Photo.objects.count()
    report = label_studio_import(campaign=target, path=_write(tmp_path, payload))
    assert [position for position, _ in report.errors] == [1, 2, 3, 4, 5]
    reasons = [reason for _, reason in report.errors]
    assert "lead_time 'abc' is not a number of seconds" in reasons[0]
    assert "lead_time True is not a number" in reasons[1]
    assert all("finite number of seconds, 0 or more" in r for r in reasons[2:])
    assert not Task.objects.filter(campaign=target).exists() and not Answer.objects.exists()
    assert Photo.objects.count() == photos_before


def test_a_huge_lead_time_is_clamped_to_six_hours(target, make_task, tmp_path):
    items = [make_task(make_task.media_image, lead_time=1e12)]  # 1e15 ms before the fix
    report = label_studio_import(campaign=target, path=_write(tmp_path, items))
    assert report.errors == [] and report.answer_created_count == 1
    assert Answer.objects.get(task__campaign=target).duration_ms == MAX_DURATION_MS == 6 * 3600 * 1000


def test_numeric_text_and_a_missing_lead_time_are_read(target, make_task, tmp_path):
    first = make_task(make_task.media_image, lead_time="1.25")
    first["annotations"].append(
        {**first["annotations"][0], "id": 2, "completed_by": 8, "lead_time": None}
    )
    report = label_studio_import(campaign=target, path=_write(tmp_path, [first]))
    assert report.errors == []
    assert sorted(Answer.objects.values_list("duration_ms", flat=True)) == [0, 1250]
