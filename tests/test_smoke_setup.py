from annotate.models import Campaign

from .factories import CampaignFactory, task_with_candidates


def test_factories_build_a_task_with_three_candidates(db):
    campaign = CampaignFactory()
    task = task_with_candidates(campaign)
    assert campaign.status == Campaign.Status.ACTIVE
    assert [c.rank for c in task.candidates.all()] == [1, 2, 3]
    assert all(c.product.images.count() == 1 for c in task.candidates.all())
