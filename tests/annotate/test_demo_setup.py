"""`manage.py demo_setup`: users and roles, data, model version, campaign and its tasks; idempotent."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotate.models import Campaign, Task, TaskCandidate
from catalog.models import Photo, Product

SMALL = {"products": 30, "photos": 4, "photos_not_in_catalog": 2, "photos_non_product": 1, "image_size": 32}


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

    again = _run(django_capture_on_commit_callbacks)
    assert "Every photo already has a task." in again
    assert (Product.objects.count(), Photo.objects.count(), Task.objects.count()) == (30, 7, 7)
    assert get_user_model().objects.filter(username="alice").count() == 1
