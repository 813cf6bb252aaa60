"""Learning from verified matches (annotate.learning.matching_*, mlcore.matching_training): a
snapshot of the photos people settled, a matching head trained on it through the Celery task, and
promotion only when it beats the pretrained cosine and the active head. Synthetic 8-dimensional
embeddings: each photo is its product's embedding under a fixed rotation plus noise, so the
pretrained cosine ranks badly and a head can learn the map back."""

import json
import uuid

import numpy as np
import pytest

from annotate import learning
from annotate.exports.services import snapshot_folder
from annotate.models import Campaign, ExportSnapshot, Task, TaskCandidate
from catalog.models import Photo
from mlcore import training
from mlcore.models import ModelVersion, PhotoEmbedding, ProductEmbedding, TrainingRun

from ..factories import CampaignFactory, ModelVersionFactory, ProductFactory, task_with_candidates


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def verified(db):
    rng = np.random.default_rng(0)
    version = ModelVersionFactory(name="synthetic-8d", embedding_dim=8)
    campaign = CampaignFactory(slug="lunch", model_version=version)
    products = [ProductFactory(image=False) for _ in range(30)]
    vectors = _unit(rng.normal(size=(30, 8)))
    for product, vector in zip(products, vectors, strict=True):
        ProductEmbedding.objects.create(product=product, model_version=version, vector=vector.tobytes())
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    for i in range(120):
        true = i % 30
        others = [(true + 1 + j) % 30 for j in rng.choice(29, 2, replace=False)]
        shown = [true, *others]
        rng.shuffle(shown)
        task = task_with_candidates(campaign, products=[products[p] for p in shown])
        # The train / validation / test split is a hash of the photo's uuid: fixed uuids, a fixed split
        # (random ones made the ~10 held-out photos differ per run, and once tied head and cosine).
        Photo.objects.filter(pk=task.photo_id).update(uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"fitcheck-test-photo-{i}"))
        is_rejection = i >= 100
        vector = (
            _unit(rng.normal(size=8)) if is_rejection else _unit(rotation @ vectors[true] + 0.05 * rng.normal(size=8))
        )
        PhotoEmbedding.objects.create(photo=task.photo, model_version=version, vector=vector.tobytes())
        label = "not_a_product" if is_rejection else str(shown.index(true) + 1)
        Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE, label=label, answer_count=2)
    # Open photos nobody answered yet, each suggested 3 wrong products by the pretrained model.
    campaign.open_truth = {}
    for i in range(15):
        true = (7 * i) % 30
        task = task_with_candidates(campaign, products=[products[(true + d) % 30] for d in (5, 10, 15)])
        vector = _unit(rotation @ vectors[true] + 0.05 * rng.normal(size=8))
        PhotoEmbedding.objects.create(photo=task.photo, model_version=version, vector=vector.tobytes())
        campaign.open_truth[task.pk] = products[true].pk
    return campaign


CONFIG = {"epochs": 60, "lr": 0.01, "seed": 0}


def test_a_head_trained_on_verified_matches_beats_the_pretrained_cosine(verified, django_capture_on_commit_callbacks):
    campaign = verified
    with django_capture_on_commit_callbacks(execute=True):
        run = learning.matching_retrain_start(campaign=campaign, reason="test", config=CONFIG)
    run.refresh_from_db()
    snapshot = ExportSnapshot.objects.get(uuid=run.snapshot_uuid)
    records = [json.loads(x) for x in (snapshot_folder(snapshot) / "items.jsonl").read_text().splitlines()]
    assert snapshot.name == "matching-lunch" and len(records) == 120
    assert sum(r["product"] is None for r in records) == 20  # "not a product"
    assert all(len(r["hard_negatives"]) == (3 if r["product"] is None else 2) for r in records)
    assert run.status == TrainingRun.Status.DONE and run.promoted, run.decision
    head = training.active_model("matching:lunch", kind=ModelVersion.Kind.MATCHING)
    metrics = head.metrics
    # The held-out split is ~10 photos (a hash of random uuids): the margin is asserted on the 15 open
    # photos below, where the pretrained suggestions are all wrong.
    assert metrics["recall_at_1"] > metrics["pretrained"]["recall_at_1"]
    assert metrics["recall_at_3"] >= metrics["recall_at_1"]
    trained = [h for h in run.history if h["epoch"] >= 1]  # epoch 0: the untrained head, evaluated only
    assert len(trained) == 60 and trained[-1]["train_loss"] < trained[0]["train_loss"]
    # On promotion the open photos were re-suggested by the head: mostly their true product first.
    first = dict(
        TaskCandidate.objects.filter(task_id__in=campaign.open_truth, rank=1).values_list("task_id", "product_id")
    )
    assert sum(first[t] == p for t, p in campaign.open_truth.items()) >= 8
    assert all(TaskCandidate.objects.filter(task_id=t).count() == 3 for t in campaign.open_truth)


def test_re_suggesting_leaves_answered_and_leased_photos_alone(verified, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    from annotate.models import Lease

    from ..factories import user_with_role

    campaign = verified
    leased, answered, *_ = list(campaign.open_truth)
    Lease.objects.create(
        task_id=leased, annotator=user_with_role("employee"), expires_at=timezone.now() + timedelta(minutes=5)
    )
    Task.objects.filter(pk=answered).update(answer_count=1)
    before = {
        t: list(TaskCandidate.objects.filter(task_id=t).values_list("product_id", flat=True))
        for t in (leased, answered)
    }
    with django_capture_on_commit_callbacks(execute=True):
        learning.matching_retrain_start(campaign=campaign, config=CONFIG)
    for t in (leased, answered):
        assert list(TaskCandidate.objects.filter(task_id=t).values_list("product_id", flat=True)) == before[t]


def test_a_head_no_better_than_the_pretrained_cosine_is_not_promoted(verified, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        run = learning.matching_retrain_start(campaign=verified, config={"epochs": 1, "lr": 1e-9})
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.DONE and not run.promoted
    assert "does not beat the pretrained cosine" in run.decision
    assert training.active_model("matching:lunch", kind=ModelVersion.Kind.MATCHING) is None


def test_matching_needs_a_match_campaign(db):
    with pytest.raises(ValueError, match="match campaign"):
        learning.matching_retrain_start(campaign=CampaignFactory(slug="t", kind=Campaign.Kind.ATTRIBUTES))


def test_the_models_page_shows_matching_heads_and_retrains_them(
    client, as_role, verified, django_capture_on_commit_callbacks
):
    as_role("tagger")
    assert client.post("/learning/lunch/matching/retrain").status_code == 403
    as_role("ml")
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/learning/lunch/matching/retrain").status_code == 302
    body = client.get("/learning/").content.decode()
    assert "matching:lunch" in body and "<th>recall@1</th>" in body and TrainingRun.objects.count() == 1
