"""The same figure reads the same on every page that shows it (issue 16, bug 12: "16 of 1324
settled" against "16 of 1284", "matched 0" against 3, "agreement —" against 0.95). Each page takes
it from one selector: annotate.selectors.campaign_counts for a campaign's tasks,
annotate.selectors.annotator_agreement for a person's agreement, AnswerPoints.is_match for the
photos a person matched."""

import re
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate import services as annotate_services
from annotate.consensus.services import consensus_recompute
from annotate.models import ConsensusMethod
from gamify import services as gamify_services
from gamify.models import Sprint

from .factories import CampaignFactory, task_with_candidates, user_with_role
from .gamify.test_points import answer

pytestmark = pytest.mark.django_db


def _text(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


def test_task_counts_matches_and_agreement_agree_across_pages(client):
    campaign = CampaignFactory(
        slug="figures", consensus_method=ConsensusMethod.MAJORITY_VOTE, overlap_min=3, overlap_max=3, gold_rate=0
    )
    ann, ben, cat = (user_with_role("employee", username=n) for n in ("ann", "ben", "cat"))
    admin = user_with_role("admin", username="boss")
    tasks = [task_with_candidates(campaign) for _ in range(5)]
    annotate_services.gold_set(task=tasks[4], label="none")  # a check: never a task to settle
    sprint = gamify_services.sprint_start(user=ann, campaign=campaign, duration_s=300)
    # Task 0 settles on product 1 (ann agrees: a match), task 1 on product 1 (ann said 2), task 2 on
    # "none" (ann agrees, not a match), task 3 stays open with ann's pick alone.
    for task, mine in zip(tasks[:3], ("1", "2", "none"), strict=True):
        answer(ann, task, mine)
        theirs = "none" if task == tasks[2] else "1"
        answer(ben, task, theirs)
        answer(cat, task, theirs)
    answer(ann, tasks[3], "3")
    consensus_recompute(campaign_id=campaign.pk)

    # The campaign's tasks: 4 regular ones (the gold one is a check), 3 settled, 2 of them on a product.
    client.force_login(admin)
    verify = _text(client.get(reverse("annotate:verify", args=[campaign.slug])))
    annotators = _text(client.get(reverse("annotate:campaign-annotators", args=[campaign.slug])))
    announce = _text(client.get(reverse("gamify:announce") + f"?campaign={campaign.slug}"))
    assert "campaign 3/4 tasks settled" in verify
    assert "3 of 4 tasks settled (2 matched to a product)" in annotators and "1 gold tasks besides" in annotators
    assert "Photos settled 3 of 4" in announce and "Matched to a product 2" in announce

    # ann's agreement on tasks several people answered: task 0 and task 2 of tasks 0-2.
    client.force_login(ann)
    stats = _text(client.get(reverse("annotate:my-stats")))
    impact = _text(client.get(reverse("gamify:impact")))
    assert "0.67 of 3" in stats and "You 0.67 of 3 answers" in impact
    client.force_login(admin)
    annotators = _text(client.get(reverse("annotate:campaign-annotators", args=[campaign.slug])))
    assert re.search(r" ann .*? 0\.67 of 3 ", annotators), annotators

    # ann's matches: task 0 only, on the impact page and in her sprint's summary.
    Sprint.objects.filter(pk=sprint.pk).update(ends_at=timezone.now() + timedelta(milliseconds=1))
    time.sleep(0.01)
    client.force_login(ann)
    impact_html = client.get(reverse("gamify:impact")).content.decode()
    summary = _text(client.get(reverse("gamify:sprint-summary", args=[sprint.uuid]), HTTP_HX_REQUEST="true"))
    assert 'id="impact-matched">1<' in impact_html
    assert "Photos you matched: 1 confirmed by consensus (of 3 you picked a product for" in summary

