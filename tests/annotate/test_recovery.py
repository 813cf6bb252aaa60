"""Jobs that finish (issue 14, item 3): a row whose job message never reached the broker, or whose
worker died, is sent again by the beat sweep (annotate.recovery.jobs_recover); a broker outage
while saving one leaves it PENDING instead of turning into an error after the row was saved."""

from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from annotate import learning, recovery
from annotate.exports import services as export_services
from annotate.models import Campaign, ExportSnapshot
from mlcore import training
from mlcore.jobs import task_send
from mlcore.models import EmbeddingRun, ModelVersion, TrainingRun

from ..factories import CampaignFactory, ModelVersionFactory, user_with_role
from ..test_worker import broker_down  # noqa: F401 (the fixture)
from .test_learning import CONFIG, loop  # noqa: F401 (the fixture)


def test_task_send_reports_a_dead_broker_instead_of_raising(broker_down):  # noqa: F811
    from annotate.tasks import export_build_task

    assert task_send(export_build_task.si(1)) is False


def test_an_export_asked_for_while_the_broker_is_down_is_queued_and_built_once_it_is_back(
    db,
    api,
    broker_down,
    settings,
    django_capture_on_commit_callbacks,  # noqa: F811
):
    """Before: the publish failure after commit became an HTML 500, leaving a PENDING snapshot that
    nothing would ever build."""
    api.force_authenticate(user_with_role("ml"))
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/exports", {"name": "outage", "formats": ["jsonl"]}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"  # honest: queued, not built
    snapshot = ExportSnapshot.objects.get(name="outage")
    assert snapshot.status == ExportSnapshot.Status.PENDING

    broker_down.restore()
    assert export_services.exports_recover() == 0  # too fresh: its message may still be on its way
    ExportSnapshot.objects.filter(pk=snapshot.pk).update(created_at=timezone.now() - timedelta(minutes=3))
    assert export_services.exports_recover() == 1
    snapshot.refresh_from_db()
    assert snapshot.status == ExportSnapshot.Status.DONE and snapshot.files
    assert export_services.exports_recover() == 0  # done: nothing left to send


def test_the_export_sweep_resends_lost_and_stale_builds_only(db, monkeypatch):
    sent = []
    monkeypatch.setattr(export_services, "task_send", lambda sig, **kw: sent.append(sig.args[0]) or True)
    now = timezone.now()

    def snapshot(name, status, **fields):
        row = ExportSnapshot.objects.create(name=name, version=1, schema_version=1, formats=["jsonl"], status=status)
        ExportSnapshot.objects.filter(pk=row.pk).update(**fields)
        return row.pk

    lost = snapshot("lost", ExportSnapshot.Status.PENDING, created_at=now - timedelta(minutes=5))
    snapshot("fresh", ExportSnapshot.Status.PENDING)
    stale = snapshot("stale", ExportSnapshot.Status.RUNNING, heartbeat_at=now - timedelta(minutes=30))
    snapshot("building", ExportSnapshot.Status.RUNNING, heartbeat_at=now)
    snapshot("done", ExportSnapshot.Status.DONE, created_at=now - timedelta(hours=1))
    assert export_services.exports_recover() == 2
    assert sorted(sent) == sorted([lost, stale])


def test_a_retrain_asked_for_while_the_broker_is_down_stays_pending_and_the_sweep_trains_it(
    client,
    loop,
    broker_down,
    settings,
    django_capture_on_commit_callbacks,  # noqa: F811
):
    """Before: the Models page's retrain button answered 500 after saving the run and its snapshot."""
    campaign, *_ = loop
    client.force_login(user_with_role("ml"))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("annotate:learning-retrain", args=[campaign.slug]))
    assert response.status_code == 302
    run = TrainingRun.objects.get(scope=learning.scope_of(campaign))
    assert run.status == TrainingRun.Status.PENDING

    broker_down.restore()
    TrainingRun.objects.filter(pk=run.pk).update(
        created_at=timezone.now() - timedelta(minutes=3), config={**run.config, **CONFIG}
    )
    assert training.training_runs_recover() == 1
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.DONE and run.promoted


def test_a_run_whose_worker_keeps_dying_is_given_up_and_learning_due_starts_a_new_one(loop):  # noqa: F811
    """Before: a stale RUNNING run was re-queued for ever, and learning_due skipped its campaign for
    ever."""
    campaign, *_ = loop
    scope = learning.scope_of(campaign)
    stuck = TrainingRun.objects.create(scope=scope, status=TrainingRun.Status.RUNNING, epoch=23, epochs=30)
    long_ago = timezone.now() - training.GIVE_UP_AFTER - timedelta(minutes=1)
    TrainingRun.objects.filter(pk=stuck.pk).update(
        started_at=long_ago, heartbeat_at=timezone.now() - training.STALE_RUN_AFTER * 2
    )
    assert learning.learning_due() == []  # a live-looking run: left alone
    assert training.training_runs_recover() == 0
    stuck.refresh_from_db()
    assert stuck.status == TrainingRun.Status.FAILED and "given up" in stuck.error
    (started,) = learning.learning_due()
    assert started.pk != stuck.pk and started.status == TrainingRun.Status.PENDING


def test_a_stale_run_of_every_kind_is_resent_to_the_task_of_its_kind(db, monkeypatch):
    from mlcore import jobs

    sent = []
    monkeypatch.setattr(jobs, "task_send", lambda sig, **kw: sent.append((sig.task, sig.args[0])) or True)
    stale_at = timezone.now() - training.STALE_RUN_AFTER * 2
    runs = {}
    for kind in (ModelVersion.Kind.TAGGING, ModelVersion.Kind.MATCHING, ModelVersion.Kind.BACKBONE):
        run = TrainingRun.objects.create(kind=kind, scope=f"s:{kind}", status=TrainingRun.Status.RUNNING)
        TrainingRun.objects.filter(pk=run.pk).update(started_at=timezone.now(), heartbeat_at=stale_at)
        runs[kind] = run.pk
    assert training.training_runs_recover() == 3
    assert sorted(sent) == sorted(
        [
            ("mlcore.train", runs[ModelVersion.Kind.TAGGING]),
            ("mlcore.train", runs[ModelVersion.Kind.MATCHING]),
            ("mlcore.matching_pretrain", runs[ModelVersion.Kind.BACKBONE]),
        ]
    )


def test_a_campaign_whose_preparation_was_lost_is_prepared_again(db, monkeypatch):
    """Before: a campaign whose suggestion chain died with its worker stayed PREPARING for ever."""
    from annotate import services

    prepared = []
    monkeypatch.setattr(services, "campaign_prepare", lambda *, campaign: prepared.append(campaign.slug))
    long_ago = timezone.now() - recovery.PREPARE_STALLED_AFTER * 2

    def campaign(slug, *, runs_at=None, status=Campaign.Status.PREPARING, kind=Campaign.Kind.MATCH):
        row = CampaignFactory(slug=slug, status=status, kind=kind, model_version=ModelVersionFactory(name=f"v-{slug}"))
        if runs_at is not None:
            run = EmbeddingRun.objects.create(model_version=row.model_version, target=EmbeddingRun.Target.PRODUCTS)
            EmbeddingRun.objects.filter(pk=run.pk).update(created_at=runs_at)
        return row

    campaign("lost", runs_at=long_ago)
    campaign("embedding", runs_at=timezone.now())
    campaign("never-prepared")
    campaign("active", runs_at=long_ago, status=Campaign.Status.ACTIVE)
    assert [c.slug for c in recovery.campaigns_recover()] == ["lost"]
    assert prepared == ["lost"]


def test_a_stale_embedding_run_is_failed_and_the_campaign_prepared_again_embeds_what_is_missing(
    db, django_capture_on_commit_callbacks, settings
):
    from mlcore.jobs import embedding_runs_recover

    from ..factories import PhotoFactory, ProductFactory

    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    version = ModelVersionFactory()
    for _ in range(4):
        ProductFactory()
    PhotoFactory()
    campaign = CampaignFactory(slug="killed", status=Campaign.Status.PREPARING, model_version=version)
    long_ago = timezone.now() - timedelta(hours=1)
    dead = EmbeddingRun.objects.create(
        model_version=version, target=EmbeddingRun.Target.PRODUCTS, status=EmbeddingRun.Status.RUNNING
    )
    EmbeddingRun.objects.filter(pk=dead.pk).update(created_at=long_ago, started_at=long_ago, heartbeat_at=long_ago)

    with django_capture_on_commit_callbacks(execute=True):
        counts = recovery.jobs_recover()
    assert counts["embedding_runs_failed"] == 1 and counts["campaigns"] == 1
    dead.refresh_from_db()
    assert dead.status == EmbeddingRun.Status.FAILED and "worker was lost" in dead.error
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.ACTIVE and campaign.tasks.count() == 1
    assert embedding_runs_recover() == 0  # idempotent


def test_the_jobs_recover_task_is_on_the_beat_schedule(settings):
    entry = next(e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "annotate.jobs_recover")
    assert entry["schedule"] <= 300
    from annotate.tasks import jobs_recover_task

    assert jobs_recover_task.name == "annotate.jobs_recover"


def test_a_recompute_asked_for_while_the_broker_is_down_is_made_up_by_the_dirty_sweep(
    transactional_db,
    broker_down,  # noqa: F811
):
    from annotate.consensus.services import consensus_recompute_dirty
    from annotate.services import consensus_recompute_queue

    campaign = CampaignFactory(slug="lost-click")
    Campaign.objects.filter(pk=campaign.pk).update(consensus_dirty=False)
    consensus_recompute_queue(campaign=campaign)  # the message is lost: nothing listens
    assert Campaign.objects.get(pk=campaign.pk).consensus_dirty
    broker_down.restore()
    consensus_recompute_dirty()  # the beat's every-minute sweep, once the broker is back
    campaign.refresh_from_db()
    assert not campaign.consensus_dirty and campaign.consensus_computed_at is not None
