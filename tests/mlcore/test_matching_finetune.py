"""Stage 2 of the matching CNN in the product (mlcore.matching_finetune, annotate.learning): the
training data taken from the answers people settled, a killed run resuming to the same model,
promotion only when the fine-tuned CNN beats the serving one on held-out verified photos (then the
catalog and photos are re-embedded and the open photos re-suggested), the learning loop's trigger,
the Models page's Retrain and its refusals, and the rollback of a CNN.

A tiny CNN (16 px, 8 channels, 16-d) trained on 40 random products for one epoch is the serving
model; fine-tuning runs 1-2 epochs. Nothing here measures accuracy (bench/match_recall.py does)."""

import shutil
from datetime import timedelta

import numpy as np
import pytest
import torch
from django.utils import timezone

from annotate import learning
from annotate.exports.records import split_of
from annotate.models import Campaign, GoldLabel, Task, TaskCandidate
from mlcore import matching_finetune as mf
from mlcore import training
from mlcore.matching_pretrain import BACKBONE_NAME, catalog_load
from mlcore.models import ModelVersion, ProductEmbedding, TrainingRun
from mlcore.nn import match_cnn as mc

from ..factories import CampaignFactory, ModelVersionFactory, ProductFactory, task_with_candidates

TINY = mc.MatchCNNConfig(
    image_size_px=16, width=8, embedding_dim=16, epochs=1, batch_size=8, workers=0, photo_batch_size=4
)
RUN = {"epochs": 2, "workers": 0}  # the fine-tuning run's settings (on top of the base model's)
REJECTIONS = ["none", "not_a_product", "unfit"]

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """A stage-1 CNN of TINY's shape, trained one epoch on random images (one category column, as a
    catalog without taxonomy gives): the serving model the tests fine-tune. Trained once per module."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(40, 1, 20, 20, generator=generator) * 255).to(torch.uint8)
    trainer = mc.Trainer(mc.MatchData(images, torch.ones(40, 1, dtype=torch.bool)), TINY, device=torch.device("cpu"))
    trainer.fit()
    path = tmp_path_factory.mktemp("base") / "base.pt"
    mc.match_cnn_save(trainer.model, TINY, path, extra={"leaves": ["(none)"]})
    return path


@pytest.fixture
def verified(base_checkpoint, settings):
    """A match campaign served by the base CNN: 40 products; 24 photos people settled (18 on a
    product, 6 none / not a product / unfit), 6 gold photos (5 on a product), 4 open photos."""
    settings.FITCHECK_MATCH_FINETUNE_CONFIG = {}
    products = [ProductFactory() for _ in range(40)]
    path = settings.FITCHECK_MODELS_ROOT / "base.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(base_checkpoint, path)
    base = ModelVersion.objects.create(
        name="matching-cnn-base",
        kind=ModelVersion.Kind.BACKBONE,
        status=ModelVersion.Status.ACTIVE,
        scope="backbone:lunch",
        backbone=BACKBONE_NAME,
        image_size_px=16,
        embedding_dim=16,
        weights_path=str(path),
        checkpoint_sha256=training.file_sha256(path),
        promoted_at=timezone.now() - timedelta(days=1),
    )
    campaign = CampaignFactory(slug="lunch", kind=Campaign.Kind.MATCH, model_version=base)
    rng = np.random.default_rng(0)
    campaign.truth = {}  # task pk → (product pk or None, [products shown])
    for i in range(30):
        shown = [products[j] for j in rng.choice(40, 3, replace=False)]
        task = task_with_candidates(campaign, products=shown)
        matched = i % 4 != 3  # 18 of the 24 settled, 5 of the 6 gold
        label = str(1 + i % 3) if matched else REJECTIONS[i % 3]
        if i < 24:
            Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE, label=label, answer_count=2)
        else:
            Task.objects.filter(pk=task.pk).update(is_gold=True)
            GoldLabel.objects.create(task=task, label=label)
        campaign.truth[task.pk] = (shown[int(label) - 1].pk if matched else None, [p.pk for p in shown])
    campaign.open_tasks = [task_with_candidates(campaign, products=products[i : i + 3]).pk for i in (0, 10, 20, 30)]
    campaign.base = base
    return campaign


def _start(campaign, **config):
    return learning.matching_finetune_start(campaign=campaign, reason="test", config={**RUN, **config})


def test_training_data_comes_from_settled_answers_with_gold_and_the_test_split_held_out(verified):
    campaign = verified
    snapshot = learning.matching_snapshot(campaign=campaign)
    from annotate.exports.services import snapshot_folder

    records = mf.snapshot_records(str(snapshot_folder(snapshot) / "items.jsonl"))
    assert len(records) == 30 and sum(r["gold"] for r in records) == 6
    catalog = catalog_load(size_px=28)
    row = {int(p): i for i, p in enumerate(catalog["product_ids"])}
    parts = mf.finetune_data(records, product_ids=catalog["product_ids"], photo_px=32)
    tasks = {t.photo_id: t for t in Task.objects.filter(campaign=campaign).select_related("photo")}
    for part, held in (("train", False), ("held_out", True)):
        data = parts[part]
        assert data["photos"].shape == (len(data["photo_ids"]), 3, 32, 32) and data["photos"].dtype == np.uint8
        for n, photo_id in enumerate(data["photo_ids"]):
            task = tasks[int(photo_id)]
            assert (task.is_gold or split_of(str(task.photo.uuid)) == "test") == held
            product, shown = campaign.truth[task.pk]
            # A match: its product's catalog row. None / not a product / unfit: the dustbin (-1).
            assert data["photo_product"][n] == (row[product] if product else -1)
            if part == "train":
                negatives = sorted(int(x) for x in data["hard_negatives"][n] if x >= 0)
                assert negatives == sorted(row[p] for p in shown if p != product)  # the ones turned down
    expected_train = [t for t in tasks.values() if t.pk in campaign.truth and not t.is_gold]
    expected_train = [t for t in expected_train if split_of(str(t.photo.uuid)) != "test"]
    assert len(parts["train"]["photo_ids"]) == len(expected_train)
    assert len(parts["held_out"]["photo_ids"]) == 30 - len(expected_train)


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_model(verified, monkeypatch):
    monkeypatch.setattr(mf, "_score_version", lambda *args: 0.0)  # ties: nothing is promoted
    campaign = verified
    straight = training.training_run_execute(run_id=_start(campaign, epochs=3).pk)
    assert straight.status == TrainingRun.Status.DONE, straight.error
    real = mc.Trainer.train_one_epoch

    def killed_in_epoch_two(self):
        if self.epoch == 1:
            raise KeyboardInterrupt("worker killed")  # not an Exception: nothing catches it
        return real(self)

    monkeypatch.setattr(mc.Trainer, "train_one_epoch", killed_in_epoch_two)
    run = _start(campaign, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        training.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and run.epoch == 1
    monkeypatch.setattr(mc.Trainer, "train_one_epoch", real)
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    torch.manual_seed(12345)  # whatever the new worker's RNG holds, the run reseeds or restores it
    resumed = training.training_run_execute(run_id=run.pk)
    assert resumed.status == TrainingRun.Status.DONE and resumed.epoch == 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    a, *_ = mc.match_cnn_load(straight.candidate.weights_path)
    b, *_ = mc.match_cnn_load(resumed.candidate.weights_path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    base, *_ = mc.match_cnn_load(campaign.base.weights_path)
    assert not torch.equal(a.project.weight, base.project.weight)  # it did train from the base


def test_a_cnn_that_beats_the_serving_one_is_promoted_and_applied(
    verified, monkeypatch, django_capture_on_commit_callbacks
):
    """The serving CNN is scored below any candidate, so the promotion path is the one under test."""
    campaign = verified
    real = mf._score_version
    monkeypatch.setattr(mf, "_score_version", lambda v, *a: -1.0 if v.pk == campaign.base.pk else real(v, *a))
    with django_capture_on_commit_callbacks(execute=True):
        run = _start(campaign)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.DONE and run.promoted, (run.error, run.decision)
    candidate = run.candidate
    assert candidate.status == ModelVersion.Status.ACTIVE and candidate.backbone == BACKBONE_NAME
    assert ModelVersion.objects.get(pk=campaign.base.pk).status == ModelVersion.Status.RETIRED
    metrics = candidate.metrics
    assert metrics["stage"] == 2 and metrics["base"]["recall_at_1"] == -1.0 and 0 <= metrics["recall_at_1"] <= 1
    assert metrics["train_matches"] + metrics["held_out_matches"] == 23  # 18 settled + 5 gold
    assert metrics["train_rejections"] + metrics["held_out_rejections"] == 7
    _, config, rejection, extra = mc.match_cnn_load(candidate.weights_path)
    assert config.lr == pytest.approx(TINY.lr / 3) and config.epochs == 2 and extra["stage"] == 2
    assert rejection is not None and metrics["threshold"] == rejection.threshold
    assert metrics["threshold_over"] == "catalog views"  # fewer than 20 held-out verified matches
    # Applied: the catalog re-embedded, the campaign switched, the open photos re-suggested.
    campaign.refresh_from_db()
    assert campaign.model_version == candidate
    assert ProductEmbedding.objects.filter(model_version=candidate).count() == 40
    for task in Task.objects.filter(pk__in=campaign.open_tasks):
        candidates = TaskCandidate.objects.filter(task=task).count()
        assert candidates == campaign.candidate_count or task.suggestions_withheld_by == candidate
    settled = Task.objects.filter(campaign=campaign, status=Task.Status.COMPLETE).first()
    assert list(TaskCandidate.objects.filter(task=settled).values_list("product_id", flat=True)) == list(
        campaign.truth[settled.pk][1]
    )  # what people answered is left as they saw it


def test_a_cnn_that_does_not_beat_the_serving_one_is_retired(verified, monkeypatch, django_capture_on_commit_callbacks):
    campaign = verified
    monkeypatch.setattr(mf, "_score_version", lambda *args: 0.5)  # a tie is not better
    with django_capture_on_commit_callbacks(execute=True):
        run = _start(campaign, epochs=1)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.DONE and not run.promoted
    assert "does not beat matching-cnn-base" in run.decision
    assert run.candidate.status == ModelVersion.Status.RETIRED
    campaign.refresh_from_db()
    assert campaign.model_version == campaign.base
    assert ModelVersion.objects.get(pk=campaign.base.pk).status == ModelVersion.Status.ACTIVE
    # A second delivery of the message does nothing: the run is DONE.
    from mlcore.tasks import matching_finetune_task

    matching_finetune_task(run.pk)
    assert ModelVersion.objects.filter(kind=ModelVersion.Kind.BACKBONE).count() == 2
    assert TrainingRun.objects.get(pk=run.pk).candidate == run.candidate


def test_the_learning_loop_starts_stage_2_once_enough_new_matches_have_settled(verified, settings):
    campaign = verified
    settings.FITCHECK_MATCH_FINETUNE_MIN_NEW = 19
    assert learning.matching_finetune_due() == []  # 18 verified matches (gold and rejections not counted)
    settings.FITCHECK_MATCH_FINETUNE_MIN_NEW = 0
    assert learning.matching_finetune_due() == []  # off
    settings.FITCHECK_MATCH_FINETUNE_MIN_NEW = 18
    [run] = learning.matching_finetune_due()
    assert mf.run_is_finetune(run) and run.config["verified_at_snapshot"] == 18 and "18 new" in run.reason
    assert run.config["base_version"] == str(campaign.base.uuid) and run.snapshot_path
    assert learning.matching_finetune_due() == []  # one run at a time
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.DONE)
    settings.FITCHECK_MATCH_FINETUNE_MIN_NEW = 1
    assert learning.matching_finetune_due() == []  # nothing new since that run
    task = Task.objects.get(pk=campaign.open_tasks[0])
    Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE, label="2", answer_count=2)
    [second] = learning.matching_finetune_due()
    assert second.config["verified_at_snapshot"] == 19
    TrainingRun.objects.filter(pk=second.pk).update(status=TrainingRun.Status.DONE)
    # A campaign served by the pretrained backbone has no CNN to fine-tune: stage 1 comes first.
    Campaign.objects.filter(pk=campaign.pk).update(model_version=ModelVersionFactory())
    Task.objects.filter(pk=campaign.open_tasks[1]).update(status=Task.Status.COMPLETE, label="1", answer_count=2)
    assert learning.matching_finetune_due() == []


def test_the_retrain_button_trains_stage_2_and_refuses_without_verified_matches(client, as_role, verified, monkeypatch):
    campaign = verified
    url = f"/learning/{campaign.slug}/matching/retrain"
    for role in ("employee", "tagger"):
        as_role(role)
        assert client.post(url).status_code == 403
    as_role("ml")
    page = client.get("/learning/").content.decode()
    assert "Retrain the matching CNN on verified photos" in page and "Roll back the matching CNN" in page
    settled = Task.objects.filter(campaign=campaign, status=Task.Status.COMPLETE)
    saved = list(settled.values_list("pk", "label"))
    settled.update(status=Task.Status.OPEN)
    response = client.post(url, follow=True)
    assert "There are no verified matches to learn from yet" in response.content.decode()
    assert not TrainingRun.objects.exists()
    for pk, label in saved:
        Task.objects.filter(pk=pk).update(status=Task.Status.COMPLETE, label=label)
    response = client.post(url, follow=True)  # on_commit is not run here: the run stays PENDING
    assert "Fine-tuning the matching CNN" in response.content.decode()
    run = TrainingRun.objects.get()
    assert mf.run_is_finetune(run) and run.reason == "by ml-user" and run.status == TrainingRun.Status.PENDING
    response = client.post(url, follow=True)
    assert "already pending or running" in response.content.decode() and TrainingRun.objects.count() == 1


def test_stage_2_refuses_a_campaign_without_a_cnn_and_settings_it_cannot_change(verified):
    campaign = verified
    with pytest.raises(ValueError, match="comes first"):
        learning.matching_finetune_start(
            campaign=CampaignFactory(slug="pretrained", model_version=ModelVersionFactory())
        )
    with pytest.raises(ValueError, match="keeps the base model's image_size_px"):
        _start(campaign, image_size_px=32)
    assert not TrainingRun.objects.exists()


def test_rolling_back_a_cnn_restores_the_previous_one_and_its_embedding(
    client, as_role, verified, monkeypatch, django_capture_on_commit_callbacks
):
    campaign = verified
    # A recall@1 the page can show (the Models page renders it with its interval): the base scores
    # 0 on the held-out photos, the candidate every one of them, so it is promoted.
    monkeypatch.setattr(mf, "_score_version", lambda v, *a: 0.0 if v.pk == campaign.base.pk else 1.0)
    with django_capture_on_commit_callbacks(execute=True):
        run = _start(campaign, epochs=1)
    run.refresh_from_db()
    assert run.promoted, run.decision
    campaign.refresh_from_db()
    assert campaign.model_version == run.candidate
    as_role("ml")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/learning/{campaign.slug}/rollback", follow=True)
    assert "matching-cnn-base is active again" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.model_version == campaign.base
    assert ModelVersion.objects.get(pk=run.candidate.pk).status == ModelVersion.Status.RETIRED
    # Its embedding was made again and the open photos re-suggested from it.
    assert ProductEmbedding.objects.filter(model_version=campaign.base).count() == 40
    base_products = set(
        ProductEmbedding.objects.filter(model_version=campaign.base).values_list("product_id", flat=True)
    )
    for task in Task.objects.filter(pk__in=campaign.open_tasks):
        shown = set(TaskCandidate.objects.filter(task=task).values_list("product_id", flat=True))
        assert shown <= base_products and (len(shown) == campaign.candidate_count or task.suggestions_withheld_by)
    # Nothing earlier than the base: a second rollback brings the fine-tuned one back (as for tagging).
    assert training.rollback(scope="backbone:lunch") == run.candidate


def test_the_sweep_sends_a_lost_stage_2_run_to_its_own_task(verified, monkeypatch):
    from mlcore import jobs

    sent = []
    monkeypatch.setattr(jobs, "task_send", lambda sig, **kw: sent.append((sig.task, sig.args[0])) or True)
    run = _start(verified)
    TrainingRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert training.training_runs_recover() == 1
    assert sent == [("mlcore.matching_finetune", run.pk)]
