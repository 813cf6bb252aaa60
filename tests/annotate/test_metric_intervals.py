"""Every metric on the Models page and the agreement report shows its n and its 95% interval
(issue 16, item 6): Wilson score intervals for proportions (accuracy, coverage, precision, recall@k,
rejection shares), a bootstrap interval for Krippendorff's alpha."""

import re

import pytest
from django.urls import reverse

from annotate import learning
from annotate.models import Task
from mlcore.models import ModelVersion
from mlcore.nn.stats import proportion_summary, wilson_interval

from ..factories import CampaignFactory, PhotoFactory, user_with_role
from ..test_first_views import _tagged_campaign

pytestmark = pytest.mark.django_db


def _ci(successes, n) -> str:
    low, high = wilson_interval(successes, n)
    return f"95% CI {low:.3f}–{high:.3f}, n={n}"


def test_wilson_interval_by_hand_and_its_errors():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19207) / 1.38415 = 0.71674, half 1.96 sqrt(0.016 + 0.0096) / 1.38415
    # = 0.22658 → 0.4902, 0.9433.
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    assert proportion_summary(0.8, 10)["successes"] == 8 and proportion_summary(None, 10) is None
    with pytest.raises(ValueError):
        proportion_summary(1.5, 10)


def test_the_models_page_shows_n_and_interval_of_every_proportion(client):
    tagging = _tagged_campaign()
    match = CampaignFactory(slug="match-ci")
    ModelVersion.objects.create(
        name="tagging-ci",
        kind=ModelVersion.Kind.TAGGING,
        status=ModelVersion.Status.ACTIVE,
        scope=learning.scope_of(tagging),
        backbone="heads",
        image_size_px=96,
        embedding_dim=1280,
        metrics={
            "attributes": {
                "color": {
                    "n": 40,
                    "accuracy": 0.9,
                    "coverage": 0.5,
                    "precision": 0.95,
                    "precision_low": 0.764,
                    "precision_high": 0.991,
                    "threshold": 0.7,
                }
            }
        },
    )
    ModelVersion.objects.create(
        name="head-ci",
        kind=ModelVersion.Kind.MATCHING,
        status=ModelVersion.Status.CANDIDATE,
        scope=learning.matching_scope_of(match),
        backbone="head",
        image_size_px=96,
        embedding_dim=1280,
        metrics={
            "matches": 50,
            "rejections": 20,
            "recall_at_1": 0.2,
            "recall_at_3": 0.4,
            "matches_rejected": 0.06,
            "rejections_without_suggestion": 0.75,
            "pretrained": {"matches": 50, "recall_at_1": 0.1, "recall_at_3": 0.3},
        },
    )
    cnn = ModelVersion.objects.create(
        name="cnn-ci",
        kind=ModelVersion.Kind.BACKBONE,
        status=ModelVersion.Status.RETIRED,
        scope=learning.backbone_scope_of(match),
        backbone="match_cnn",
        image_size_px=32,
        embedding_dim=128,
        metrics={
            "held_out_views": 500,
            "recall_at_1": 0.13,
            "base": {"name": "pretrained", "recall_at_1": 0.06},
            "localiser_s": 266.4,
            "matte_s": 301.2,
            "pair_s": 412.7,
        },
    )
    for n in range(3):  # photos whose suggestions the CNN's rejection model withheld, one since answered
        task = Task.objects.create(campaign=match, photo=PhotoFactory(), shuffle_key=n, suggestions_withheld_by=cnn)
        if n == 2:
            Task.objects.filter(pk=task.pk).update(answer_count=1)
    client.force_login(user_with_role("ml"))
    html = re.sub(r"\s+", " ", client.get(reverse("annotate:learning")).content.decode())
    # Tagging: accuracy 36/40, coverage 20/40, precision 19/20 (its stored interval from exact counts).
    assert f'0.900 <span class="muted small ci">{_ci(36, 40)}</span>' in html
    assert _ci(20, 40) in html and "95% CI 0.764–0.991, n=20" in html
    # Matching head: recall@1 10/50, recall@3 20/50, pretrained 5/50 and 15/50, rejections 15/20, 3/50.
    for successes, n in ((10, 50), (20, 50), (5, 50), (15, 50), (15, 20), (3, 50)):
        assert _ci(successes, n) in html, (successes, n)
    # Matching CNN: recall@1 65/500 on held-out views, the pretrained yardstick's 30/500.
    assert _ci(65, 500) in html and _ci(30, 500) in html
    assert "photos cut to the product by its localiser, trained in 266 s" in html
    assert "suggestions re-ranked by geometric verification (matte trained in 301 s, pair verifier in 413 s)" in html
    assert "<td>3 (2)</td></tr>" in html  # the CNN's withheld photos (unanswered), as a head's


def test_the_agreement_report_shows_alphas_interval_and_n(client):
    campaign = _tagged_campaign()
    client.force_login(user_with_role("ml"))
    html = re.sub(r"\s+", " ", client.get(reverse("annotate:agreement-report", args=[campaign.slug])).content.decode())
    assert "<th>95% CI</th>" in html
    rows = re.findall(r"<tr><td>(\w+)</td><td>all</td>.*?</tr>", html)
    assert rows, html[:2000]
    cells = re.findall(r'<td class="ci">([^<]*)</td>', html)
    intervals = [c for c in cells if "–" in c]
    assert intervals, cells
    for cell in intervals:
        low, high = (float(x) for x in cell.split("–"))
        assert low <= high
    assert re.search(r"n=4</text>", html)  # the plot's labels carry n (4 products rated twice)
