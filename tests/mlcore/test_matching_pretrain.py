"""Stage 1 of the matching CNN in the product (mlcore.matching_pretrain): taxonomy partial labels, a
run registered and promoted only when it beats the serving model, a killed run resuming to the same
model, the stale-run sweep, and the campaign switching to a promoted CNN (annotate.learning)."""

from datetime import timedelta

import pytest
import torch
from django.utils import timezone

from annotate import learning
from annotate.models import Task, TaskCandidate
from annotate.services import campaign_prepare
from catalog.services import taxonomy_path_ensure
from mlcore import matching_pretrain as mp
from mlcore import training
from mlcore.models import ModelVersion, PhotoEmbedding, ProductEmbedding, TrainingRun
from mlcore.nn import match_cnn as mc

from ..factories import CampaignFactory, ModelVersionFactory, PhotoFactory, ProductFactory

TINY = {"image_size_px": 16, "width": 8, "embedding_dim": 16, "epochs": 2, "batch_size": 8, "workers": 0}

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog():
    shirt = taxonomy_path_ensure(path="Clothing › Tops › Shirt")
    taxonomy_path_ensure(path="Clothing › Tops › Pullover")
    boot = taxonomy_path_ensure(path="Shoes › Ankle boot")
    tops = shirt.parent
    products = [ProductFactory(master_category=[shirt, tops, boot, None][i % 4]) for i in range(16)]
    return products


def test_category_masks_give_a_leaf_its_column_an_inner_node_its_leaves_and_none_every_leaf(catalog):
    mask, leaves = mp.category_masks(
        ["Clothing › Tops › Shirt", "Clothing › Tops", None, "Shoes › Ankle boot", "Unknown › Thing"]
    )
    assert leaves == ["Clothing › Tops › Pullover", "Clothing › Tops › Shirt", "Shoes › Ankle boot"]
    assert mask.tolist() == [
        [False, True, False],
        [True, True, False],
        [True, True, True],
        [False, False, True],
        [True, True, True],  # a path the taxonomy does not hold constrains nothing
    ]


def test_catalog_load_reads_every_active_product_once_at_the_network_size(catalog):
    catalog[0].is_active = False
    catalog[0].save()
    data = mp.catalog_load(size_px=28)
    assert data["products"].shape == (15, 3, 28, 28) and data["products"].dtype.name == "uint8"
    assert catalog[0].pk not in data["product_ids"].tolist()
    assert data["category_mask"].shape == (15, 3)


def _run(scope="backbone:test", **config):
    base = ModelVersionFactory()
    return mp.matching_pretrain_create(scope=scope, base_version=base, config={**TINY, **config})


def test_a_run_registers_its_cnn_and_records_the_decision_against_the_serving_model(catalog):
    run = _run()
    assert mp.matching_pretrain_create(scope="backbone:test", base_version=ModelVersionFactory()) == run  # reused
    run = training.training_run_execute(run_id=run.pk)
    assert run.status == TrainingRun.Status.DONE, run.error
    assert run.epoch == 2 and [h["epoch"] for h in run.history] == [1, 2]
    candidate = run.candidate
    assert candidate.kind == ModelVersion.Kind.BACKBONE and candidate.backbone == mp.BACKBONE_NAME
    assert candidate.metrics["held_out_views"] >= 1
    assert "recall_at_1" in candidate.metrics["base"]
    base_score = candidate.metrics["base"]["recall_at_1"]
    if run.promoted:  # the scope's first CNN: the decision names the model it beat, with both scores
        assert run.decision == (
            f"the first matching CNN: held-out recall@1 {candidate.metrics['score']:.4f} beats "
            f"{candidate.metrics['base']['name']}'s {base_score:.4f}"
        )
    else:
        assert "does not beat" in run.decision
    expected = ModelVersion.Status.ACTIVE if run.promoted else ModelVersion.Status.RETIRED
    assert candidate.status == expected
    model, config, rejection, _ = mc.match_cnn_load(candidate.weights_path)
    assert config.image_size_px == 16 and rejection is not None
    assert training.file_sha256(candidate.weights_path) == candidate.checkpoint_sha256


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_model(catalog, monkeypatch):
    straight = training.training_run_execute(run_id=_run(scope="backbone:a", epochs=3).pk)
    real = mc.Trainer.train_one_epoch

    def killed_in_epoch_two(self):
        if self.epoch == 1:
            raise KeyboardInterrupt("worker killed")  # not an Exception: nothing catches it
        return real(self)

    monkeypatch.setattr(mc.Trainer, "train_one_epoch", killed_in_epoch_two)
    run = _run(scope="backbone:b", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        training.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING and run.epoch == 1
    assert training.training_run_execute(run_id=run.pk).status == TrainingRun.Status.RUNNING  # not stale yet
    monkeypatch.setattr(mc.Trainer, "train_one_epoch", real)
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    resumed = training.training_run_execute(run_id=run.pk)
    assert resumed.status == TrainingRun.Status.DONE and resumed.epoch == 3
    a, *_ = mc.match_cnn_load(straight.candidate.weights_path)
    b, *_ = mc.match_cnn_load(resumed.candidate.weights_path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_run_stopped_by_the_workers_shutdown_is_queued_again_and_resumes_to_the_same_model(catalog, monkeypatch):
    """A worker asked to shut down (mlcore.jobs.worker_stopping) stops the run between two steps of
    epoch 2: the run goes back to PENDING at epoch 1 and its task is sent again at once (not FAILED,
    as a "DataLoader worker exited unexpectedly" once made it); run again, it resumes from epoch 1's
    checkpoint to the uninterrupted run's weights."""
    from mlcore import jobs

    straight = training.training_run_execute(run_id=_run(scope="backbone:a", epochs=3).pk)
    stopping = {"now": False}
    real = mc.Trainer.train_one_epoch

    def stop_asked_in_epoch_two(self):
        stopping["now"] = self.epoch == 1
        return real(self)

    sent = []
    monkeypatch.setattr(jobs, "worker_stopping", lambda: stopping["now"])
    monkeypatch.setattr(jobs, "task_send", lambda sig, **kw: sent.append((sig.task, sig.args[0])) or True)
    monkeypatch.setattr(mc.Trainer, "train_one_epoch", stop_asked_in_epoch_two)
    run = _run(scope="backbone:b", epochs=3)
    assert training.training_run_execute(run_id=run.pk).status == TrainingRun.Status.PENDING
    run.refresh_from_db()
    assert (run.epoch, run.error, run.heartbeat_at, run.candidate) == (1, "", None, None)
    assert sent == [("mlcore.matching_pretrain", run.pk)]

    stopping["now"] = False
    monkeypatch.setattr(mc.Trainer, "train_one_epoch", real)
    resumed = training.training_run_execute(run_id=run.pk)
    assert resumed.status == TrainingRun.Status.DONE and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a, *_ = mc.match_cnn_load(straight.candidate.weights_path)
    b, *_ = mc.match_cnn_load(resumed.candidate.weights_path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_shutdown_while_the_pair_verifiers_views_are_aligned_stops_the_run_there(catalog, monkeypatch, settings):
    """The alignment before the pair verifier's first epoch takes minutes on a real catalog: it beats
    the heartbeat and checks for a shutdown after each chunk, so a stopping worker is not held there
    and the run goes back to PENDING to be sent again."""
    from mlcore import jobs
    from mlcore.nn import verify

    settings.FITCHECK_MATCH_PAIR_CONFIG = {**settings.FITCHECK_MATCH_PAIR_CONFIG, "views": 160}  # 3 chunks of 75
    stopping, chunks = {"now": False}, []
    real = verify._aligned

    def aligned_then_stop_asked(*args, **kwargs):
        stopping["now"] = True
        chunks.append(1)
        return real(*args, **kwargs)

    sent = []
    monkeypatch.setattr(jobs, "worker_stopping", lambda: stopping["now"])
    monkeypatch.setattr(jobs, "task_send", lambda sig, **kw: sent.append((sig.task, sig.args[0])) or True)
    monkeypatch.setattr(verify, "_aligned", aligned_then_stop_asked)
    run = _run(scope="backbone:pair-stop", epochs=1)
    assert training.training_run_execute(run_id=run.pk).status == TrainingRun.Status.PENDING
    run.refresh_from_db()
    assert (run.error, run.candidate) == ("", None) and sent == [("mlcore.matching_pretrain", run.pk)]
    assert len(chunks) == 1  # stopped after the first chunk, not after all three


def test_an_error_while_the_worker_is_not_stopping_still_fails_the_run(catalog, monkeypatch):
    from mlcore import jobs

    def broken(self):
        raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly")

    monkeypatch.setattr(jobs, "worker_stopping", lambda: False)
    monkeypatch.setattr(mc.Trainer, "train_one_epoch", broken)
    run = _run(scope="backbone:c")
    with pytest.raises(RuntimeError):
        training.training_run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "exited unexpectedly" in run.error


def test_the_sweep_requeues_stale_and_lost_runs_only(catalog, monkeypatch):
    sent = []
    from mlcore import jobs

    names = {"mlcore.matching_pretrain": "pretrain", "mlcore.train": "train"}
    monkeypatch.setattr(jobs, "task_send", lambda sig, **kw: sent.append((names[sig.task], sig.args[0])) or True)
    fresh = _run(scope="backbone:fresh")
    lost = _run(scope="backbone:lost")
    stale = _run(scope="backbone:stale")
    TrainingRun.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(hours=1))
    TrainingRun.objects.filter(pk=stale.pk).update(
        status=TrainingRun.Status.RUNNING, heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert training.training_runs_recover() == 2
    assert sorted(sent) == sorted([("pretrain", lost.pk), ("pretrain", stale.pk)])
    assert fresh.pk not in [pk for _, pk in sent]


def test_the_sweep_leaves_a_run_queued_behind_its_campaigns_embedding_alone(catalog, monkeypatch):
    """Issue 16: under load the products took over 2 minutes to embed; the sweep then sent the
    waiting matching CNN run on its own, the gpu worker trained it for 20+ minutes first, and the
    photos (the next step of the chain) and so the first tasks waited behind it."""
    from mlcore import jobs
    from mlcore.models import EmbeddingRun

    sent = []
    monkeypatch.setattr(jobs, "task_send", lambda sig, **kw: sent.append(sig.args[0]) or True)
    run = _run(scope="backbone:preparing")
    base = ModelVersion.objects.get(uuid=run.config["base_version"])
    TrainingRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(hours=1))
    products = EmbeddingRun.objects.create(model_version=base, target="products", status="done")
    photos = EmbeddingRun.objects.create(model_version=base, target="photos")  # next in the chain
    assert training.training_runs_recover() == 0 and sent == []
    EmbeddingRun.objects.filter(pk=photos.pk).update(status="running")
    assert training.training_runs_recover() == 0 and sent == []
    EmbeddingRun.objects.filter(pk__in=[products.pk, photos.pk]).update(status="done")
    assert training.training_runs_recover() == 1 and sent == [run.pk]  # its message is lost now


def test_preparing_a_campaign_trains_the_cnn_and_a_promoted_one_takes_over_the_open_tasks(
    catalog, settings, django_capture_on_commit_callbacks, monkeypatch
):
    """Eager Celery: prepare → embed → tasks → stage 1 → promoted → re-embed → switch → re-suggest.
    The serving model is scored below any candidate, so the promotion path is the one under test."""
    monkeypatch.setattr(mp, "_score_version", lambda *args: -1.0)
    settings.FITCHECK_MATCH_PRETRAIN = True
    settings.FITCHECK_MATCH_PRETRAIN_CONFIG = TINY
    for _ in range(6):
        PhotoFactory()
    campaign = CampaignFactory(model_version=ModelVersionFactory())
    with django_capture_on_commit_callbacks(execute=True):
        campaign_prepare(campaign=campaign)
    run = TrainingRun.objects.get(kind=ModelVersion.Kind.BACKBONE, scope=learning.backbone_scope_of(campaign))
    assert run.status == TrainingRun.Status.DONE, run.error
    assert Task.objects.filter(campaign=campaign).count() == 6
    assert run.promoted, run.decision
    model, *_ = mc.match_cnn_load(run.candidate.weights_path)
    assert model.localiser is not None and model.matte is not None  # its suggestions are verified
    assert model.pair is not None and model.pair.width == 8  # with the learned fourth term
    assert run.candidate.metrics["matte_s"] > 0 and run.candidate.metrics["pair_s"] > 0
    campaign.refresh_from_db()
    assert campaign.model_version == run.candidate
    assert ProductEmbedding.objects.filter(model_version=run.candidate).count() == 16
    assert PhotoEmbedding.objects.filter(model_version=run.candidate).count() == 6
    product_ids = set(ProductEmbedding.objects.filter(model_version=run.candidate).values_list("product_id", flat=True))
    for task in Task.objects.filter(campaign=campaign):
        candidates = list(TaskCandidate.objects.filter(task=task).values_list("product_id", flat=True))
        if task.suggestions_withheld_by_id is None:  # re-suggested by the CNN: its products, its scores
            assert len(candidates) == campaign.candidate_count and set(candidates) <= product_ids
        else:
            assert candidates == [] and task.suggestions_withheld_by == run.candidate


def test_backbone_apply_does_nothing_for_a_model_that_is_no_longer_active(catalog):
    campaign = CampaignFactory(model_version=ModelVersionFactory())
    retired = ModelVersion.objects.create(
        name="backbone-old",
        kind=ModelVersion.Kind.BACKBONE,
        status=ModelVersion.Status.RETIRED,
        scope=learning.backbone_scope_of(campaign),
        backbone=mp.BACKBONE_NAME,
        image_size_px=16,
        embedding_dim=16,
    )
    assert learning.backbone_apply(campaign=campaign, version=retired)["tasks"] == 0
    campaign.refresh_from_db()
    assert campaign.model_version != retired


def test_a_lost_switch_to_a_promoted_cnn_is_resumed_by_the_beat_task(catalog, monkeypatch):
    started = []
    monkeypatch.setattr(learning, "backbone_apply_start", lambda **kw: started.append(kw))
    campaign = CampaignFactory(model_version=ModelVersionFactory())
    assert learning.backbones_unapplied_resume() == []  # no CNN: nothing to resume
    active = ModelVersion.objects.create(
        name="matching-cnn-active",
        kind=ModelVersion.Kind.BACKBONE,
        status=ModelVersion.Status.ACTIVE,
        scope=learning.backbone_scope_of(campaign),
        backbone=mp.BACKBONE_NAME,
        image_size_px=16,
        embedding_dim=16,
    )
    assert learning.backbones_unapplied_resume() == [campaign]
    assert started == [{"campaign": campaign, "version": active}]
    campaign.model_version = active
    campaign.save()
    assert learning.backbones_unapplied_resume() == []  # switched: nothing left to do


def test_the_models_page_trains_the_cnn_again_after_a_failed_run_once_at_a_time(catalog, client, monkeypatch):
    """A campaign whose stage-1 run failed is still served by the pretrained embedding, and nothing
    trained it again: the ML team's "Train the matching CNN on the catalog" queues a new run, offered
    and accepted only while no run is queued or running and only while a pretrained model serves."""
    from django.urls import reverse

    from ..factories import user_with_role

    sent = []
    monkeypatch.setattr(learning, "send_on_commit", lambda sig: sent.append((sig.task, sig.args[0])))
    campaign = CampaignFactory(slug="lunch")
    scope = learning.backbone_scope_of(campaign)
    failed = mp.matching_pretrain_create(scope=scope, base_version=campaign.model_version, config=TINY)
    TrainingRun.objects.filter(pk=failed.pk).update(status=TrainingRun.Status.FAILED, error="RuntimeError: boom")
    button = "Train the matching CNN on the catalog"

    url = reverse("annotate:matching-pretrain", args=[campaign.slug])
    assert client.post(url).status_code == 302 and "/login" in client.post(url)["Location"]  # anonymous
    client.force_login(user_with_role("employee", username="alice"))
    assert client.post(url).status_code in (403, 404)
    assert not sent
    client.force_login(user_with_role("ml", username="mila"))
    assert client.get(url).status_code == 405  # POST only
    assert client.post(reverse("annotate:matching-pretrain", args=["no-such-campaign"])).status_code == 404
    assert button in client.get(reverse("annotate:learning")).content.decode()
    response = client.post(reverse("annotate:matching-pretrain", args=[campaign.slug]), follow=True)
    messages = [(m.level_tag, str(m)) for m in response.context["messages"]]
    assert messages == [("success", "Training the matching CNN of Lunch verify on its catalog: the run shows below.")]
    run = TrainingRun.objects.exclude(pk=failed.pk).get(scope=scope)
    assert (run.status, run.reason, run.config["base_version"]) == (
        TrainingRun.Status.PENDING,
        "by mila",
        str(campaign.model_version.uuid),
    )
    assert sent == [("mlcore.matching_pretrain", run.pk)]
    assert button not in response.content.decode()  # one run at a time

    response = client.post(reverse("annotate:matching-pretrain", args=[campaign.slug]), follow=True)
    assert [m.level_tag for m in response.context["messages"]] == ["error"]
    assert "already queued or training" in str(list(response.context["messages"])[0])
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.DONE)
    trained = ModelVersionFactory(name="match_cnn-trained", kind=ModelVersion.Kind.BACKBONE, scope=scope)
    campaign.model_version = trained
    campaign.save(update_fields=["model_version"])
    response = client.post(reverse("annotate:matching-pretrain", args=[campaign.slug]), follow=True)
    assert "already a trained model" in str(list(response.context["messages"])[0])
    assert button not in response.content.decode()
    assert TrainingRun.objects.filter(scope=scope).count() == 2 and len(sent) == 1
