"""The suggestion pipeline through a real Celery worker process and a real broker.

On the SQLite pass the broker is the embedded default (a SQLite file through kombu's SQLAlchemy
transport); on the PostgreSQL pass `make test` points CELERY_BROKER_URL at the Redis it started.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from kombu import pools as kombu_pools

from annotate.models import Campaign, Task, TaskCandidate
from annotate.services import campaign_prepare
from config.celery import app as celery_app
from mlcore.models import EmbeddingRun

from .factories import CampaignFactory, ModelVersionFactory, PhotoFactory, ProductFactory

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 240  # generous: the worker imports torch, and CI machines may be busy


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = quote(db["USER"] or "")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _use_broker(url: str) -> None:
    """Point this process's Celery app at `url`, dropping pooled connections to the old broker."""
    celery_app.conf.broker_url = url
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
        celery_app._pool = None
    # The producer pool wraps the connection pool closed above, and kombu caches producer pools per
    # broker URL process-wide: drop both, or the next send fails with "Acquire on closed pool".
    celery_app.amqp._producer_pool = None
    kombu_pools.reset()


class BrokerDown:
    """Celery not eager and its broker a closed port (nothing listens on port 1: every publish is
    refused), until `restore()`: eager again, on the settings' broker. Celery prefers the
    CELERY_BROKER_URL environment variable (the PostgreSQL pass sets it) to conf.broker_url, so both
    are pointed at the dead broker."""

    URL = "redis://127.0.0.1:1/0"

    def __init__(self, settings):
        self.settings = settings
        self.patch = pytest.MonkeyPatch()
        self.patch.setenv("CELERY_BROKER_URL", self.URL)
        celery_app.conf.task_always_eager = False
        _use_broker(self.URL)
        with celery_app.connection_for_write() as conn:
            pointed = (conn.hostname, conn.port) == ("127.0.0.1", 1)
        if not pointed:
            self.restore()
            raise AssertionError("Celery is not pointed at the dead broker")

    def restore(self) -> None:
        self.patch.undo()
        _use_broker(self.settings.CELERY_BROKER_URL)
        celery_app.conf.task_always_eager = True


@pytest.fixture
def broker_down(settings):
    """A BrokerDown for the test, restored at its end."""
    down = BrokerDown(settings)
    yield down
    down.restore()


@pytest.fixture
def broker_url(tmp_path):
    if settings.CELERY_BROKER_URL.startswith("sqla+"):
        return f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"  # never the demo's queue file
    return settings.CELERY_BROKER_URL


def _worker_start(
    broker_url: str,
    settings,
    *,
    log_name: str = "worker.log",
    extra_args=(),
    queues: str = "default,gpu",
    own_group: bool = False,
):
    """Start a `celery worker` process on `queues` (default and gpu), sharing this test's database
    and media; `extra_args` are added to its command line; `own_group` makes it lead a process group
    of its own, as bin/demo runs each worker, to be signalled with its children. Returns (process,
    log file opened w+)."""
    env = os.environ | {
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": broker_url,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "FITCHECK_EXPORTS_ROOT": str(settings.FITCHECK_EXPORTS_ROOT),
        "FITCHECK_MODELS_ROOT": str(settings.FITCHECK_MODELS_ROOT),
        "FITCHECK_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    log = open(settings.MEDIA_ROOT.parent / log_name, "w+")  # noqa: SIM115 (closed by the caller)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queues,
            "-n",
            f"{queues.replace(',', '-')}@%h",  # two workers of one test need two names
            "--pool",
            "solo",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
            *extra_args,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_group,
    )
    return process, log


def _worker_stop(process, log) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture
def worker(broker_url, settings):
    """A `celery worker` process on queues default and gpu, sharing this test's database and media."""
    celery_app.conf.task_always_eager = False
    _use_broker(broker_url)
    process, log = _worker_start(broker_url, settings)
    yield process, log
    _worker_stop(process, log)
    _use_broker(settings.CELERY_BROKER_URL)


def _log_tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-4000:]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_campaign_suggestions_are_built_by_a_real_worker(worker, settings):
    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    process, log = worker
    version = ModelVersionFactory()
    for _ in range(5):
        ProductFactory()
    photos = [PhotoFactory() for _ in range(3)]
    campaign = CampaignFactory(slug="worker-test", status=Campaign.Status.PREPARING, model_version=version)

    with transaction.atomic():
        products_run, photos_run = campaign_prepare(campaign=campaign)
    # Sent after commit: nothing ran in this process.
    assert EmbeddingRun.objects.get(pk=products_run.pk).status in (
        EmbeddingRun.Status.PENDING,
        EmbeddingRun.Status.RUNNING,
        EmbeddingRun.Status.DONE,
    )

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        campaign.refresh_from_db()
        if campaign.status != Campaign.Status.PREPARING or process.poll() is not None:
            break
        time.sleep(0.5)
    assert process.poll() is None, f"the worker died:\n{_log_tail(log)}"
    assert campaign.status == Campaign.Status.ACTIVE, f"still {campaign.status}; worker log:\n{_log_tail(log)}"

    runs = {run.target: run for run in EmbeddingRun.objects.filter(pk__in=[products_run.pk, photos_run.pk])}
    assert runs["products"].status == runs["photos"].status == EmbeddingRun.Status.DONE
    assert (runs["products"].done_count, runs["photos"].done_count) == (5, 3)
    tasks = Task.objects.filter(campaign=campaign)
    assert sorted(tasks.values_list("photo_id", flat=True)) == sorted(p.pk for p in photos)
    for task in tasks:
        assert list(TaskCandidate.objects.filter(task=task).values_list("rank", flat=True)) == [1, 2, 3]
    assert "mlcore.embed" in _log_tail(log) and "annotate.campaign_tasks_build" in _log_tail(log)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_consensus_recompute_runs_on_a_real_worker(worker, settings):
    """The beat task, sent through the broker as beat sends it, recomputes a dirty campaign."""
    from annotate.services import answer_submit
    from annotate.tasks import consensus_recompute_dirty_task

    from .factories import task_with_candidates, user_with_role

    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    process, log = worker
    campaign = CampaignFactory(slug="worker-consensus", gold_first_count=0, gold_rate=0)
    task = task_with_candidates(campaign)
    for n in range(2):
        answer_submit(
            user=user_with_role("employee"), task=task, choice="unfit", duration_ms=1500, idempotency_key=f"w{n}"
        )
    campaign.refresh_from_db()
    assert campaign.consensus_dirty and campaign.consensus_computed_at is None

    consensus_recompute_dirty_task.delay()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        campaign.refresh_from_db()
        if campaign.consensus_computed_at is not None or process.poll() is not None:
            break
        time.sleep(0.5)
    assert campaign.consensus_computed_at is not None, f"not recomputed; worker log:\n{_log_tail(log)}"
    assert not campaign.consensus_dirty
    assert campaign.consensus_params["labels"] == campaign.labels()
    task.refresh_from_db()
    assert task.label == "unfit" and task.status == Task.Status.COMPLETE
    assert "annotate.consensus_recompute_dirty" in _log_tail(log)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_export_is_built_by_a_real_worker(worker, settings):
    """Queued on commit, built by the worker outside any transaction: its read snapshot (REPEATABLE
    READ on PostgreSQL, a deferred BEGIN on SQLite) and its progress writes on a second connection."""
    import hashlib

    from annotate.exports.services import export_create, snapshot_folder
    from annotate.models import ExportSnapshot
    from annotate.services import answer_submit

    from .factories import task_with_candidates, user_with_role

    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    process, log = worker
    campaign = CampaignFactory(slug="worker-export", overlap_min=2, overlap_max=2, gold_first_count=0, gold_rate=0)
    people = [user_with_role("employee") for _ in range(2)]
    for i in range(3):
        task = task_with_candidates(campaign)
        for person in people:
            answer_submit(user=person, task=task, choice="unfit", duration_ms=1500, idempotency_key=f"e{i}")
    with transaction.atomic():
        snapshot = export_create(name="worker", formats=["jsonl", "hf", "label_studio"], include_answers=True)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        snapshot.refresh_from_db()
        if snapshot.status in (ExportSnapshot.Status.DONE, ExportSnapshot.Status.FAILED) or process.poll() is not None:
            break
        time.sleep(0.5)
    assert snapshot.status == ExportSnapshot.Status.DONE, f"{snapshot.status} {snapshot.error}; log:\n{_log_tail(log)}"
    assert (snapshot.item_count, snapshot.answer_count, snapshot.total_count) == (3, 6, 3)
    folder = snapshot_folder(snapshot)
    for listed in snapshot.files:
        assert hashlib.sha256((folder / listed["path"]).read_bytes()).hexdigest() == listed["sha256"]
    assert not folder.with_name(folder.name + ".partial").exists()
    assert "annotate.export_build" in _log_tail(log)


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie nobody reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.worker
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_beat_embedded_in_a_worker_dies_when_the_worker_is_killed(broker_url, settings, tmp_path):
    """bin/demo runs beat inside the default worker (`--beat`). Before: after kill -9 of the worker the
    beat lived on as an orphan, scheduling jobs no worker of its own would run."""
    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    process, log = _worker_start(
        broker_url, settings, log_name="worker-beat.log", extra_args=["--beat", "--schedule", str(tmp_path / "beat")]
    )
    try:
        beat = None
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and process.poll() is None and beat is None:
            if "beat: Starting" in _log_tail(log):
                with open(f"/proc/{process.pid}/task/{process.pid}/children") as fh:
                    children = [int(pid) for pid in fh.read().split()]
                beat = children[0] if children else None
            time.sleep(0.2)
        assert beat is not None and _alive(beat), f"no beat process:\n{_log_tail(log)}"
        process.kill()  # SIGKILL: the worker cannot stop its beat itself
        process.wait(timeout=20)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(beat):
            time.sleep(0.2)
        survived = _alive(beat)
        if survived:
            os.kill(beat, 9)  # leave no orphan behind, whatever the outcome
        assert not survived, "the embedded beat outlived its worker"
    finally:
        _worker_stop(process, log)


@pytest.mark.parametrize(
    ("selected", "pool", "imports"),
    [
        (["gpu"], "solo", True),
        (["default", "gpu"], "solo", True),
        ([], "solo", True),  # no -Q: the worker consumes every queue, gpu among them
        (["default"], "solo", False),
        (["gpu"], "prefork", False),  # forking beside a thread that holds an import lock can deadlock
    ],
)
def test_a_solo_gpu_worker_imports_torch_in_the_background_as_it_starts(monkeypatch, selected, pool, imports):
    from types import SimpleNamespace

    from celery.concurrency import get_implementation
    from kombu import Queue

    import config.celery

    started = []
    monkeypatch.setattr(config.celery, "_torch_import", lambda: started.append(threading.current_thread().name))
    queues = celery_app.amqp.Queues([Queue("default"), Queue("gpu")])  # the registry -Q selects from
    if selected:
        queues.select(selected)
    amqp = SimpleNamespace(queues=queues)
    instance = SimpleNamespace(app=SimpleNamespace(amqp=amqp), pool_cls=get_implementation(pool))
    config.celery._gpu_worker_imports_torch(sender="gpu@test", instance=instance)
    for thread in threading.enumerate():
        if thread.name == "torch-import":
            thread.join(timeout=10)
    assert started == (["torch-import"] if imports else [])


def _wait_until_run_ends(run, process) -> None:
    """Poll `run` (a TrainingRun) until it is DONE or FAILED, `process` (its worker) exits, or
    2 × WAIT_S pass; the caller asserts on the refreshed run."""
    from mlcore.models import TrainingRun

    deadline = time.monotonic() + 2 * WAIT_S
    while time.monotonic() < deadline and process.poll() is None:
        run.refresh_from_db()
        if run.status in (TrainingRun.Status.DONE, TrainingRun.Status.FAILED):
            break
        time.sleep(0.5)


def _wait_until_run_reaches_epoch(run, process, epoch: int) -> None:
    """Poll `run` until it has finished `epoch` epochs or is neither PENDING nor RUNNING, `process`
    exits, or 2 × WAIT_S pass; the caller refreshes and asserts."""
    from mlcore.models import TrainingRun

    deadline = time.monotonic() + 2 * WAIT_S
    while time.monotonic() < deadline and process.poll() is None:
        run.refresh_from_db()
        if run.epoch >= epoch or run.status not in (TrainingRun.Status.PENDING, TrainingRun.Status.RUNNING):
            break
        time.sleep(0.2)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_while_the_localiser_trains_resumes_at_the_localiser(broker_url, settings):
    """After stage 1's last epoch the run trains the product localiser (mlcore.matching_pretrain.
    localiser_train). Kill -9 the worker there; the run, sent again by the stale-run sweep, resumes
    after stage 1's last epoch (no epoch is trained twice), trains the localiser again and finishes
    with it in the checkpoint."""
    from annotate.tasks import jobs_recover_task
    from mlcore import training
    from mlcore.matching_pretrain import matching_pretrain_create
    from mlcore.models import TrainingRun
    from mlcore.nn.match_cnn import match_cnn_load
    from mlcore.tasks import matching_pretrain_task

    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    # Long enough to be caught mid-way (hundreds of tiny epochs, seconds in all), short for a test.
    settings.FITCHECK_MATCH_LOCALISER_CONFIG = {"views": 48, "sets": 1, "echo": 100, "width": 8}
    celery_app.conf.task_always_eager = False
    _use_broker(broker_url)
    for _ in range(16):
        ProductFactory()
    tiny = {"image_size_px": 16, "width": 8, "embedding_dim": 16, "epochs": 2, "batch_size": 8, "workers": 0}
    run = matching_pretrain_create(scope="backbone:worker-test", base_version=ModelVersionFactory(), config=tiny)
    assert run.config["localiser"]["echo"] == 100
    first, first_log = _worker_start(broker_url, settings, log_name="worker-1.log")
    try:
        matching_pretrain_task.delay(run.pk)
        deadline = time.monotonic() + 2 * WAIT_S
        while time.monotonic() < deadline and first.poll() is None:
            if "localiser epoch 10," in _log_tail(first_log):
                break
            time.sleep(0.1)
        log = _log_tail(first_log)
        assert "localiser epoch 10," in log and "localiser epoch 100," not in log, log
        first.kill()
        first.wait(timeout=20)
    finally:
        _worker_stop(first, first_log)
    run.refresh_from_db()
    assert (run.status, run.epoch, run.candidate) == (TrainingRun.Status.RUNNING, 2, None)

    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - training.STALE_RUN_AFTER * 2)
    second, second_log = _worker_start(broker_url, settings, log_name="worker-2.log")
    try:
        jobs_recover_task.delay()
        _wait_until_run_ends(run, second)
        second_log.flush()
        second_log.seek(0)
        log = second_log.read()
        assert run.status == TrainingRun.Status.DONE, f"{run.status}: {run.error}\n{_log_tail(second_log)}"
        assert "resumes after epoch 2" in log and "localiser epoch 100," in log, _log_tail(second_log)
    finally:
        _worker_stop(second, second_log)
        _use_broker(settings.CELERY_BROKER_URL)
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert run.candidate.metrics["localiser_s"] > 0
    model, _, _, _ = match_cnn_load(run.candidate.weights_path)
    assert model.localiser is not None


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_matching_pretrain_runs_on_a_real_worker_and_resumes_after_the_worker_is_killed(broker_url, settings):
    """Stage 1 of the matching CNN (tiny model, 16 products) on a real worker; kill -9 it mid-run; a
    second worker, sent the run by the stale-run sweep, resumes from the last epoch's checkpoint."""
    from annotate.tasks import jobs_recover_task
    from mlcore import training
    from mlcore.matching_pretrain import matching_pretrain_create
    from mlcore.models import ModelVersion, TrainingRun
    from mlcore.tasks import matching_pretrain_task

    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    celery_app.conf.task_always_eager = False
    _use_broker(broker_url)
    for _ in range(16):
        ProductFactory()
    tiny = {"image_size_px": 16, "width": 8, "embedding_dim": 16, "epochs": 40, "batch_size": 8, "workers": 0}
    run = matching_pretrain_create(scope="backbone:worker-test", base_version=ModelVersionFactory(), config=tiny)
    first, first_log = _worker_start(broker_url, settings, log_name="worker-1.log")
    try:
        matching_pretrain_task.delay(run.pk)
        _wait_until_run_reaches_epoch(run, first, 2)  # the worker imports torch and torchvision first
        run.refresh_from_db()
        assert run.status == TrainingRun.Status.RUNNING and 2 <= run.epoch < 40, (
            f"{run.status} at epoch {run.epoch}:\n{_log_tail(first_log)}"
        )
        first.kill()  # SIGKILL mid-run: nothing is cleaned up, the message is never acknowledged
        first.wait(timeout=20)
    finally:
        _worker_stop(first, first_log)
    killed_at = TrainingRun.objects.get(pk=run.pk).epoch
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.RUNNING

    # The heartbeat goes stale (made so here instead of waiting STALE_RUN_AFTER); the beat sweep,
    # sent through the broker as beat sends it and run by the new worker, re-sends the run.
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - training.STALE_RUN_AFTER * 2)
    second, second_log = _worker_start(broker_url, settings, log_name="worker-2.log")
    try:
        jobs_recover_task.delay()
        _wait_until_run_ends(run, second)
        assert run.status == TrainingRun.Status.DONE, f"{run.status}: {run.error}\n{_log_tail(second_log)}"
        # It resumed from the checkpoint of the last epoch the first worker finished (or a later
        # one, when the first worker saved another checkpoint between our read and the kill).
        resumed_after = int(_log_tail(second_log).split("resumes after epoch ")[1].split()[0])
        assert killed_at <= resumed_after < 40, _log_tail(second_log)
    finally:
        _worker_stop(second, second_log)
        _use_broker(settings.CELERY_BROKER_URL)
    assert run.epoch == 40 and [h["epoch"] for h in run.history] == list(range(1, 41))
    assert run.candidate.kind == ModelVersion.Kind.BACKBONE and run.decision


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_stopped_as_make_demo_stops_it_hands_its_training_run_to_the_next_worker(broker_url, settings):
    """bin/demo stops a worker by sending SIGTERM to its whole process group, DataLoader workers
    included. The run (views drawn by a DataLoader worker) stops between two steps, goes back to
    PENDING and is queued again before the worker exits; the next worker to start resumes it from
    its last checkpoint at once, with no stale-heartbeat wait and no sweep."""
    import signal

    from mlcore.matching_pretrain import matching_pretrain_create
    from mlcore.models import TrainingRun
    from mlcore.tasks import matching_pretrain_task

    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    celery_app.conf.task_always_eager = False
    _use_broker(broker_url)
    for _ in range(16):
        ProductFactory()
    tiny = {"image_size_px": 16, "width": 8, "embedding_dim": 16, "epochs": 60, "batch_size": 8}
    tiny |= {"workers": 1, "echo": 2}  # views drawn by a DataLoader worker process
    settings.FITCHECK_MATCH_LOCALISE = False
    run = matching_pretrain_create(scope="backbone:worker-test", base_version=ModelVersionFactory(), config=tiny)
    first, first_log = _worker_start(broker_url, settings, log_name="worker-1.log", own_group=True)
    try:
        matching_pretrain_task.delay(run.pk)
        _wait_until_run_reaches_epoch(run, first, 2)
        run.refresh_from_db()
        assert run.status == TrainingRun.Status.RUNNING and 2 <= run.epoch < 60, (
            f"{run.status} at epoch {run.epoch}:\n{_log_tail(first_log)}"
        )
        os.killpg(first.pid, signal.SIGTERM)  # as bin/demo's cleanup: the worker and its children
        first.wait(timeout=60)  # warm shutdown: the run stops at its next step, then the worker exits
    finally:
        _worker_stop(first, first_log)
    run.refresh_from_db()
    first_log_text = open(settings.MEDIA_ROOT.parent / "worker-1.log").read()
    assert run.status == TrainingRun.Status.PENDING and run.error == "", first_log_text[-4000:]
    assert "stopped at epoch" in first_log_text and "exited unexpectedly" not in first_log_text
    assert "resumes after" not in first_log_text  # the stopping worker leaves the run to the next
    stopped_at = run.epoch

    second, second_log = _worker_start(broker_url, settings, log_name="worker-2.log")
    try:
        _wait_until_run_ends(run, second)
        assert run.status == TrainingRun.Status.DONE, f"{run.status}: {run.error}\n{_log_tail(second_log)}"
        assert stopped_at >= 2 and f"resumes after epoch {stopped_at}" in _log_tail(second_log), _log_tail(second_log)
    finally:
        _worker_stop(second, second_log)
        _use_broker(settings.CELERY_BROKER_URL)
    assert [h["epoch"] for h in run.history] == list(range(1, 61))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_matching_finetune_runs_on_a_real_worker(worker, settings):
    """Stage 2 of the matching CNN (tiny model, 16 products, 12 verified photos) queued by the Retrain
    service after commit and trained, scored and decided by a real worker on queue gpu."""
    import torch

    from annotate import learning
    from annotate.models import GoldLabel
    from mlcore import training
    from mlcore.matching_pretrain import BACKBONE_NAME
    from mlcore.models import ModelVersion, TrainingRun
    from mlcore.nn import match_cnn as mc

    from .factories import task_with_candidates

    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    process, log = worker
    products = [ProductFactory() for _ in range(16)]
    config = mc.MatchCNNConfig(image_size_px=16, width=8, embedding_dim=16, epochs=1, batch_size=8, workers=0)
    images = (torch.rand(16, 1, 20, 20, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    trainer = mc.Trainer(mc.MatchData(images, torch.ones(16, 1, dtype=torch.bool)), config, device=torch.device("cpu"))
    trainer.fit()
    path = settings.FITCHECK_MODELS_ROOT / "base.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    mc.match_cnn_save(trainer.model, config, path, extra={"leaves": ["(none)"]})
    base = ModelVersion.objects.create(
        name="matching-cnn-worker-base",
        kind=ModelVersion.Kind.BACKBONE,
        scope="backbone:worker-test",
        backbone=BACKBONE_NAME,
        image_size_px=16,
        embedding_dim=16,
        weights_path=str(path),
        checkpoint_sha256=training.file_sha256(path),
        promoted_at=timezone.now(),
    )
    campaign = CampaignFactory(slug="worker-test", model_version=base)
    for i in range(12):
        task = task_with_candidates(campaign, products=[products[(i + d) % 16] for d in (0, 5, 10)])
        if i < 10:
            label = "none" if i == 9 else str(1 + i % 3)
            Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETE, label=label, answer_count=2)
        else:  # gold: held out for scoring
            Task.objects.filter(pk=task.pk).update(is_gold=True)
            GoldLabel.objects.create(task=task, label="1")
    with transaction.atomic():
        run = learning.matching_finetune_start(campaign=campaign, config={"epochs": 2, "workers": 0})
    _wait_until_run_ends(run, process)
    assert run.status == TrainingRun.Status.DONE, f"{run.status}: {run.error}\n{_log_tail(log)}"
    assert run.epoch == 2 and [h["epoch"] for h in run.history] == [1, 2]
    assert run.candidate.metrics["stage"] == 2 and run.candidate.metrics["held_out_matches"] >= 2
    assert "held-out verified matches" in run.decision
    assert "mlcore.matching_finetune" in _log_tail(log)
