"""`manage.py demo_setup`: users and roles, data, model version, campaign and its tasks; idempotent."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotate.models import Campaign, GoldLabel, Task, TaskCandidate
from catalog.models import DemoPhotoTruth, Photo, Product

SMALL = {
    "products": 30,
    "photos": 4,
    "photos_not_in_catalog": 2,
    "photos_non_product": 1,
    "image_size": 32,
    "gold": 3,
}


def _run(django_capture_on_commit_callbacks) -> str:
    out = StringIO()
    # The Celery chain is sent on commit; eager mode (tests only) runs it here.
    with django_capture_on_commit_callbacks(execute=True):
        call_command("demo_setup", stdout=out, stderr=StringIO(), **SMALL)
    return out.getvalue()


@pytest.mark.django_db
def test_demo_setup_builds_a_usable_campaign_and_is_idempotent(django_capture_on_commit_callbacks):
    out = _run(django_capture_on_commit_callbacks)
    assert "alice  employee" in out and "fitcheck-demo" in out
    alice = get_user_model().objects.get(username="alice")
    assert alice.check_password("fitcheck-demo")
    assert list(alice.groups.values_list("name", flat=True)) == ["employee"]
    assert get_user_model().objects.get(username="admin").is_superuser
    campaign = Campaign.objects.get(slug="lunch-verify")
    assert campaign.status == Campaign.Status.ACTIVE
    assert campaign.model_version.image_size_px == 32
    assert Task.objects.filter(campaign=campaign).count() == Photo.objects.count() == 7
    assert TaskCandidate.objects.filter(task__campaign=campaign).count() == 21
    # Gold from the demo's ground truth: the true product's rank if suggested, else none / not_a_product.
    golds = list(GoldLabel.objects.filter(task__campaign=campaign).select_related("task"))
    assert len(golds) == 3 and all(g.task.is_gold and g.source == "demo" for g in golds)
    for gold in golds:
        truth = DemoPhotoTruth.objects.get(photo=gold.task.photo)
        ranks = {c.product_id: str(c.rank) for c in gold.task.candidates.all()}
        expected = "not_a_product" if truth.kind == "not_a_product" else ranks.get(truth.product_id, "none")
        assert gold.label == expected

    again = _run(django_capture_on_commit_callbacks)
    assert "Every photo already has a task; 0 more marked gold." in again
    assert GoldLabel.objects.count() == 3
    assert (Product.objects.count(), Photo.objects.count()) == (30, 7)
    assert Task.objects.filter(campaign__slug="lunch-verify").count() == 7
    # The attribute campaign: every categorised product once (here fewer than --tag-products), 20 of
    # them the calibration sample of both teams; a rerun adds nothing.
    tagging = Campaign.objects.get(slug="catalog-tagging")
    assert tagging.kind == Campaign.Kind.ATTRIBUTES and tagging.guide.startswith("# Catalog tagging guide")
    tag_tasks = Task.objects.filter(campaign=tagging)
    assert tag_tasks.count() == Product.objects.filter(master_category__isnull=False).count()
    assert tag_tasks.filter(is_calibration=True).count() == 20
    assert sorted(tagging.calibration_teams.values_list("slug", flat=True)) == ["customer-experience", "merchandising"]
    assert get_user_model().objects.filter(username="alice").count() == 1
