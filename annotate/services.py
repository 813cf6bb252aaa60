"""Annotation writes: campaign preparation, routing (task_next_for), answers and undo."""

import logging
import random
from datetime import timedelta

from celery import chain
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from catalog.models import Photo, Product
from mlcore import services as ml_services
from mlcore.jobs import send_on_commit
from mlcore.models import EmbeddingRun, ModelVersion, PhotoEmbedding
from mlcore.tasks import embed_run_task

from .consensus.services import answers_needed, consensus_task_update
from .models import AnnotatorStats, Answer, Campaign, GoldLabel, Lease, QueueDraw, Skip, Task, TaskCandidate

logger = logging.getLogger(__name__)

SHUFFLE_SPACE = 2**31
UNDO_WINDOW = timedelta(minutes=10)
MAX_DURATION_MS = 6 * 60 * 60 * 1000


class AnswerInvalid(ValueError):
    """The answer's fields are wrong; `errors` maps field name to a list of reasons."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class AnswerConflict(Exception):
    """The answer cannot be taken in the task's current state. `code` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class AnnotatorPaused(AnswerConflict):
    """An admin paused this person in this campaign: no tasks, no answers."""

    def __init__(self):
        super().__init__("annotator_paused", "An admin has paused your work in this campaign.")


class WrongCampaignKind(ValueError):
    """The task belongs to the other kind of campaign: a match answer (or gold answer) for a product
    task of an attributes campaign, or attribute values for a photo task. `code` is machine-readable."""

    code = "wrong_campaign_kind"


def campaign_kind_require(task: Task, kind: str) -> None:
    """Raises WrongCampaignKind unless `task`'s campaign is of `kind` (Campaign.Kind) and the task is of
    that kind's item (a photo for match, a product for attributes)."""
    item_ok = task.photo_id is not None if kind == Campaign.Kind.MATCH else task.product_id is not None
    if task.campaign.kind != kind or not item_ok:
        wanted = "match (photo)" if kind == Campaign.Kind.MATCH else "attributes (product)"
        raise WrongCampaignKind(f"task {task.uuid} is not a {wanted} task of a {kind} campaign.")


class GoldInvalid(ValueError):
    """A gold label is not one of the campaign's labels."""


# -- campaigns ---------------------------------------------------------------------------------------


def campaign_create(*, slug: str, name: str, model_version: ModelVersion, created_by=None, **fields) -> Campaign:
    """Create a match campaign (or return the one with this slug). Idempotent on slug."""
    campaign, _ = Campaign.objects.get_or_create(
        slug=slug, defaults={"name": name, "model_version": model_version, "created_by": created_by, **fields}
    )
    return campaign


def campaign_prepare(*, campaign: Campaign, demo_gold_count: int = 0) -> tuple[EmbeddingRun, EmbeddingRun]:
    """Queue the suggestion pipeline: embed products, embed photos (queue gpu), then build tasks, and
    for the demo, mark `demo_gold_count` tasks gold from the demo's ground truth (gold_mark_demo).
    Then, for a match campaign on a pretrained embedding, train the matching CNN on the catalog
    (mlcore.matching_pretrain, queue gpu): promoted, it replaces the campaign's embedding model and
    re-suggests the open photos (annotate.learning.backbone_apply).

    The Celery chain is sent after the surrounding transaction commits. Safe to call again: each
    step only does what is missing.

    Returns the two EmbeddingRun rows (products, photos), whose progress the UI shows.
    """
    version = campaign.model_version
    with transaction.atomic():
        Campaign.objects.filter(pk=campaign.pk).exclude(status=Campaign.Status.ACTIVE).update(
            status=Campaign.Status.PREPARING, status_detail=""
        )
        products_run = ml_services.embedding_run_create(version=version, target=EmbeddingRun.Target.PRODUCTS)
        photos_run = ml_services.embedding_run_create(version=version, target=EmbeddingRun.Target.PHOTOS)
        from .tasks import campaign_tasks_build_task, demo_gold_mark_task

        steps = [
            embed_run_task.si(products_run.pk),
            embed_run_task.si(photos_run.pk),
            campaign_tasks_build_task.si(campaign.pk),
        ]
        if demo_gold_count:
            steps.append(demo_gold_mark_task.si(campaign.pk, demo_gold_count))
        if _pretrain_wanted(campaign):
            from mlcore.matching_pretrain import matching_pretrain_create
            from mlcore.tasks import matching_pretrain_task

            from .learning import backbone_scope_of

            run = matching_pretrain_create(scope=backbone_scope_of(campaign), base_version=version)
            # After the first tasks exist: people start on the pretrained model's suggestions.
            steps.append(matching_pretrain_task.si(run.pk))
        pipeline = chain(*steps)
        send_on_commit(pipeline)  # a broker outage: the beat sweep prepares it again
    return products_run, photos_run


def _pretrain_wanted(campaign: Campaign) -> bool:
    """A match campaign serving a pretrained embedding gets a catalog-trained matching CNN (stage 1),
    unless settings.FITCHECK_MATCH_PRETRAIN is off."""
    from django.conf import settings

    return (
        settings.FITCHECK_MATCH_PRETRAIN
        and campaign.kind == Campaign.Kind.MATCH
        and version_is_pretrained(campaign.model_version)
    )


def version_is_pretrained(version: ModelVersion) -> bool:
    return version.kind == ModelVersion.Kind.EMBEDDING


def campaign_tasks_build(*, campaign_id: int, batch_size: int = 500) -> int:
    """Create a task for every photo that has an embedding and no task yet in the campaign, with the
    model's top `candidate_count` products (mlcore.services.photos_suggest: cosine similarity, the
    shortlist re-ranked by geometric verification under a verifying matching CNN) as its candidates
    in model order. A photo the serving matching CNN's rejection model turns down gets its task with
    no candidates and `suggestions_withheld_by` set to the CNN, as annotate.learning.matching_apply
    withholds an open task's. Marks the campaign ACTIVE.

    Idempotent: (campaign, photo) is unique, so a second run creates nothing. Each batch is one
    transaction. Returns the number of tasks created.

    Raises:
        mlcore.services.EmbeddingsMissing: the products were not embedded.
    """
    campaign = Campaign.objects.select_related("model_version").filter(pk=campaign_id).first()
    if campaign is None:
        logger.warning("campaign %s no longer exists", campaign_id)
        return 0
    version = campaign.model_version
    k = campaign.candidate_count
    rng = random.Random()
    created = 0
    while True:
        has_task = Task.objects.filter(campaign=campaign, photo=OuterRef("pk"))
        embedded = PhotoEmbedding.objects.filter(model_version=version, photo=OuterRef("pk"))
        photo_ids = list(
            Photo.objects.filter(Exists(embedded))
            .exclude(Exists(has_task))
            .order_by("pk")
            .values_list("pk", flat=True)[:batch_size]
        )
        if not photo_ids:
            break
        suggestions = ml_services.photos_suggest(version=version, photo_ids=photo_ids, k=k)
        with transaction.atomic():
            tasks = [
                Task(
                    campaign=campaign,
                    photo_id=photo_id,
                    shuffle_key=rng.randrange(SHUFFLE_SPACE),
                    suggestions_withheld_by=version if suggestions[photo_id] is None else None,
                )
                for photo_id in photo_ids
                if photo_id in suggestions and (suggestions[photo_id] is None or len(suggestions[photo_id]) == k)
            ]
            if not tasks:
                break
            Task.objects.bulk_create(tasks, ignore_conflicts=True)
            by_photo = dict(
                Task.objects.filter(campaign=campaign, photo_id__in=[t.photo_id for t in tasks])
                .annotate(n=Count("candidates"))
                .filter(n=0)
                .values_list("photo_id", "pk")
            )
            TaskCandidate.objects.bulk_create(
                [
                    TaskCandidate(task_id=task_id, product_id=product_id, rank=rank, score=score)
                    for photo_id, task_id in by_photo.items()
                    for rank, (product_id, score) in enumerate(suggestions[photo_id] or (), start=1)
                ],
                ignore_conflicts=True,
            )
            created += len(by_photo)
    if created and connection.vendor == "postgresql":
        # Fresh planner statistics for the bulk-inserted rows, rather than waiting for autovacuum:
        # the queue query takes 29 ms instead of 41 ms at p50 on a new 10k-task campaign
        # (bench/api_latency.py --no-analyze).
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE annotate_task, annotate_taskcandidate")
    Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.PREPARING).update(
        status=Campaign.Status.ACTIVE, status_detail=""
    )
    return created


# -- routing -----------------------------------------------------------------------------------------


def _answered_by(user):
    """Subquery: the outer task has a live answer by `user`."""
    return Exists(Answer.objects.filter(task=OuterRef("pk"), annotator=user, revoked_at__isnull=True))


def _skipped_by(user):
    """Subquery: `user` skipped the outer task (index annotate_skip_unique)."""
    return Exists(Skip.objects.filter(task=OuterRef("pk"), annotator=user))


def _open_for(*, user, campaign: Campaign, now):
    """Open regular tasks of `campaign` that `user` has not answered and that still want another
    person: other people's live leases < answers still needed (answers_needed: up to overlap_min,
    else one), and answers + those leases < overlap_max. So a task is never handed to more people
    than it still needs."""
    held = (
        Lease.objects.filter(task=OuterRef("pk"), expires_at__gt=now)
        .exclude(annotator=user)
        .order_by()
        .values("task")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        Task.objects.filter(campaign=campaign, is_gold=False, status=Task.Status.OPEN)
        .exclude(_answered_by(user))
        .annotate(
            held_count=Coalesce(Subquery(held), 0),
            needed=Greatest(Value(campaign.overlap_min) - F("answer_count"), Value(1)),
        )
        .filter(held_count__lt=F("needed"), answer_count__lt=campaign.overlap_max - F("held_count"))
    )


def _gold_for(*, user, campaign: Campaign):
    """Gold tasks of `campaign` that `user` has not answered nor skipped (gold tasks take any number
    of people; a skipped one is not offered again, there are others to check with)."""
    return Task.objects.filter(campaign=campaign, is_gold=True).exclude(_answered_by(user)).exclude(_skipped_by(user))


def _first_from_seed(queryset, seed: int):
    """The first row in shuffle order at or after `seed`, wrapping round to the start."""
    after = queryset.filter(shuffle_key__gte=seed).order_by("shuffle_key").first()
    return after or queryset.filter(shuffle_key__lt=seed).order_by("shuffle_key").first()


def _most_useful(queryset, *, campaign: Campaign, seed: int):
    """The task of `queryset` with the highest priority (the chance one more answer settles it); among
    equals, the first in the session's shuffle order from `seed`.

    The priorities present are read from the index alone (annotate_task_queue, at most 101 values),
    then each level is tried from the top: ordering the filtered queryset by priority instead made
    SQLite evaluate the per-person filters on every open task (next-task p50 24 → 43 ms,
    bench/api_latency.py)."""
    levels = (
        Task.objects.filter(campaign=campaign, is_gold=False, status=Task.Status.OPEN)
        .order_by("-priority")
        .values_list("priority", flat=True)
        .distinct()
    )
    for level in levels:
        task = _first_from_seed(queryset.filter(priority=level), seed)
        if task is not None:
            return task
    return None


def annotator_stats_for(*, user, campaign: Campaign) -> AnnotatorStats | None:
    """The person's stats row in the campaign, or None before their first answer."""
    return AnnotatorStats.objects.filter(campaign=campaign, annotator=user).first()


# The operating system's randomness: nothing the client sends or sees can predict a gold draw. Tests may
# swap in a seeded random.Random (the attacker still does not know its seed).
_gold_rng: random.Random = random.SystemRandom()


def gold_probability(*, answered: int, campaign: Campaign) -> float:
    """Chance in [0, 1] that a person's task after `answered` answers in the campaign is gold:
    campaign.gold_early_rate during their first campaign.gold_first_count answers, then
    campaign.gold_rate."""
    return campaign.gold_early_rate if answered < campaign.gold_first_count else campaign.gold_rate


def gold_draw(*, user, campaign: Campaign, answered: int, previous: QueueDraw | None = None) -> QueueDraw:
    """Draw, server-side, whether `user`'s next task in `campaign` (after `answered` answers) is gold,
    and the start of its gold pick; store it (one row per person and campaign: `previous`, that row
    if already read, is overwritten in one UPDATE). The draw is Bernoulli(gold_probability) from
    `_gold_rng`; it is never sent to the client. Call inside the transaction that leases the task."""
    is_gold = _gold_rng.random() < gold_probability(answered=answered, campaign=campaign)
    gold_key = _gold_rng.randrange(SHUFFLE_SPACE)
    if previous is not None:
        QueueDraw.objects.filter(pk=previous.pk).update(is_gold=is_gold, gold_key=gold_key, drawn_at=timezone.now())
        previous.is_gold, previous.gold_key = is_gold, gold_key
        return previous
    draw, _ = QueueDraw.objects.update_or_create(
        campaign=campaign, annotator=user, defaults={"is_gold": is_gold, "gold_key": gold_key}
    )
    return draw


def _gold_pick(*, user, campaign: Campaign, draw: QueueDraw | None, exclude=None):
    """The gold task `draw` asks for (None when it draws a regular task, or no gold task is left for
    `user`): the first unanswered gold task in shuffle order from the draw's own key."""
    if draw is None or not draw.is_gold:
        return None
    queryset = _gold_for(user=user, campaign=campaign)
    if exclude is not None:
        queryset = queryset.exclude(pk=exclude.pk)
    return _first_from_seed(queryset, draw.gold_key)


def task_next_for(*, user, campaign: Campaign, seed: int) -> Task | None:
    """Hand `user` their next task in `campaign`, leased to them for campaign.lease_seconds.

    A person holding an unexpired lease on an open, unanswered task gets that task again (a page
    reload does not skip work). Otherwise, a gold task when the server's draw for this task says so
    (QueueDraw, `gold_draw`: probability gold_early_rate during the person's first
    gold_first_count answers, then gold_rate, from the operating system's randomness) and one is
    left that they have not answered; else the open regular task where one more answer helps most
    (highest priority: the probability that it settles the task; `_open_for` says which tasks still
    want someone), ties broken by the session's shuffled order (a rotation from `seed` of each
    task's random shuffle_key). Tasks the person skipped (`task_skip`) come only when nothing else
    is left for them, the longest skipped first. Then the draw for the person's following task is made. The person's
    other leases in the campaign are released.

    `seed` orders regular tasks only: whether a task is gold, and which gold task, never depends on
    it or on anything else the client sends (issue 14: the seed used to decide gold).

    Locks: the chosen Task row (select_for_update skip_locked on PostgreSQL, so two people never
    race for the last slot; SQLite serialises writers). Idempotent while the lease lives.

    Returns the Task, or None when nothing is left for this person.

    Raises:
        AnnotatorPaused: an admin paused this person in this campaign.
    """
    seed %= SHUFFLE_SPACE
    now = timezone.now()
    with transaction.atomic():
        stats = annotator_stats_for(user=user, campaign=campaign)
        if stats is not None and stats.is_paused:
            Lease.objects.filter(annotator=user, task__campaign=campaign).delete()
            raise AnnotatorPaused()
        # The person's live leases first (index annotate_lease_by_annotator: a handful of rows), then
        # the checks on their tasks. Joining from tasks instead made PostgreSQL walk every open task
        # of a freshly loaded campaign, before ANALYZE, at 60 ms a call (bench/api_latency.py).
        leases = list(
            Lease.objects.filter(annotator=user, expires_at__gt=now).select_related("task").order_by("-created_at")
        )
        held = [
            lease.task
            for lease in leases
            if lease.task.campaign_id == campaign.pk and lease.task.status == Task.Status.OPEN
        ]
        if held:
            answered = set(
                Answer.objects.filter(task__in=held, annotator=user, revoked_at__isnull=True).values_list(
                    "task_id", flat=True
                )
            )
            for task in held:
                if task.pk not in answered:
                    return task
        answered = stats.answer_count if stats else 0
        draw = QueueDraw.objects.filter(campaign=campaign, annotator=user).first()
        if draw is None:
            draw = gold_draw(user=user, campaign=campaign, answered=answered)
        task = _gold_pick(user=user, campaign=campaign, draw=draw)
        if task is None:
            queryset = _open_for(user=user, campaign=campaign, now=now).select_for_update(
                skip_locked=True, of=("self",)
            )
            task = _most_useful(queryset.exclude(_skipped_by(user)), campaign=campaign, seed=seed)
            if task is None:
                task = _skipped_oldest(queryset, user=user)
        # Expired or finished leases of this person, this task's included, make way for the new one.
        Lease.objects.filter(annotator=user, task__campaign=campaign).delete()
        if task is None:
            return None
        Lease.objects.create(task=task, annotator=user, expires_at=now + timedelta(seconds=campaign.lease_seconds))
        gold_draw(user=user, campaign=campaign, answered=answered + 1, previous=draw)  # for the following task
    return task


def task_peek_after(*, user, campaign: Campaign, seed: int, current: Task) -> Task | None:
    """The task `task_next_for` would most likely hand out after `current`, without leasing it: the
    gold task when the server's draw for the next task (QueueDraw) is gold, so that gold tasks are
    prefetched like any other and load no slower, else the most useful regular task.

    Used only to prefetch the next task's images; no lock, no write. It shows the client the next
    task, never whether it is gold.
    """
    seed %= SHUFFLE_SPACE
    draw = QueueDraw.objects.filter(campaign=campaign, annotator=user).first()
    gold = _gold_pick(user=user, campaign=campaign, draw=draw, exclude=current)
    if gold is not None:
        return gold
    queryset = _open_for(user=user, campaign=campaign, now=timezone.now()).exclude(pk=current.pk)
    return _most_useful(queryset.exclude(_skipped_by(user)), campaign=campaign, seed=current.shuffle_key)


def _skipped_oldest(queryset, *, user):
    """The task of `queryset` that `user` skipped longest ago, or None."""
    skipped_at = Skip.objects.filter(task=OuterRef("pk"), annotator=user).values("skipped_at")[:1]
    return (
        queryset.filter(_skipped_by(user))
        .annotate(skipped_at=Subquery(skipped_at))
        .order_by("skipped_at", "pk")
        .first()
    )


def task_skip(*, user, task: Task) -> Skip:
    """`user` passes over `task` without answering: their lease on it is released, so it goes back to
    the pool for the others at once, and for them it comes after every task they have not skipped
    (task_next_for), the longest skipped first. No answer is recorded; counters, consensus and
    points do not move. Skipping the same task again moves it to the back (one Skip row per task and
    person, upserted).

    Locks nothing but the person's own rows (their lease and Skip row). Idempotent.

    Returns the Skip row.

    Raises:
        AnswerConflict: code "already_answered": the person has a live answer on the task (undo it
            instead); nothing written.
    """
    now = timezone.now()
    with transaction.atomic():
        if Answer.objects.filter(task=task, annotator=user, revoked_at__isnull=True).exists():
            raise AnswerConflict("already_answered", "You have already answered this task: undo it instead.")
        Lease.objects.filter(task=task, annotator=user).delete()
        skip, _ = Skip.objects.update_or_create(task=task, annotator=user, defaults={"skipped_at": now})
    return skip


# -- answers -----------------------------------------------------------------------------------------


def _choice_check(*, task: Task, choice: str, product_uuid) -> tuple[Product | None, dict[str, list[str]]]:
    """The chosen product (or None) and the reasons, per field, that `choice`/`product_uuid` are wrong."""
    errors: dict[str, list[str]] = {}
    if choice not in Answer.MATCH_CHOICES:
        errors["choice"] = [f"must be one of {', '.join(Answer.MATCH_CHOICES)}"]
    product = None
    if choice == Answer.Choice.PRODUCT:
        candidates = list(task.candidates.all())
        if not candidates:
            # A matching head withheld this photo's suggestions (learning.matching_apply).
            errors["choice"] = ["this photo has no suggested product to pick: answer none, not_a_product or unfit"]
        elif not product_uuid:
            errors["product"] = ["required when choice is product"]
        else:
            product = next((c.product for c in candidates if str(c.product.uuid) == str(product_uuid)), None)
            if product is None:
                errors["product"] = ["is not one of this task's candidates"]
    elif product_uuid:
        errors["product"] = ["must be empty unless choice is product"]
    return product, errors


def choice_label(*, task: Task, choice: str, product_uuid) -> str:
    """The label (a key of campaign.labels()) of a choice on `task`, as a gold answer gives it.

    Raises:
        AnswerInvalid: the choice or product is wrong, with reasons per field.
    """
    product, errors = _choice_check(task=task, choice=choice, product_uuid=product_uuid)
    if errors:
        raise AnswerInvalid(errors)
    return answer_label(task=task, choice=choice, product=product)


def answer_validate(
    *, task: Task, choice: str, product_uuid, duration_ms, idempotency_key
) -> tuple[str, Product | None, int, str]:
    """Check an answer's fields against the task. Returns (choice, product or None, duration_ms, key).

    Raises:
        AnswerInvalid: with every field's reasons at once.
    """
    product, errors = _choice_check(task=task, choice=choice, product_uuid=product_uuid)
    try:
        duration_ms = int(duration_ms)
        if not 0 <= duration_ms <= MAX_DURATION_MS:
            raise ValueError
    except (TypeError, ValueError):
        errors["duration_ms"] = [f"must be an integer between 0 and {MAX_DURATION_MS}"]
    key = str(idempotency_key or "").strip()
    if not 1 <= len(key) <= 80:
        errors["idempotency_key"] = ["must be 1 to 80 characters"]
    if errors:
        raise AnswerInvalid(errors)
    return choice, product, duration_ms, key


def answer_label(*, task: Task, choice: str, product: Product | None) -> str:
    """The answer as a key of campaign.labels(): the chosen candidate's rank ("1".."3"), or the
    rejection itself ("none", "not_a_product", "unfit")."""
    if choice != Answer.Choice.PRODUCT:
        return str(choice)
    return str(next(c.rank for c in task.candidates.all() if c.product_id == product.pk))


def _stats_on_answer(*, stats: AnnotatorStats | None, user, campaign: Campaign, label: str, is_too_fast: bool) -> None:
    """Keep the person's counters current: answers, too-fast answers and same-option runs. Creates the
    row on a first answer. Flags are recomputed by the full recompute."""
    if stats is None:
        stats, _ = AnnotatorStats.objects.get_or_create(campaign=campaign, annotator=user)
    run = stats.current_run_length + 1 if stats.current_run_label == label else 1
    AnnotatorStats.objects.filter(pk=stats.pk).update(
        answer_count=F("answer_count") + 1,
        too_fast_count=F("too_fast_count") + int(is_too_fast),
        current_run_label=label,
        current_run_length=run,
        longest_run_length=Greatest(F("longest_run_length"), Value(run)),
    )


def answer_submit(
    *, user, task: Task, choice: str, product_uuid=None, duration_ms, idempotency_key: str
) -> tuple[Answer, bool]:
    """Record `user`'s answer to `task`, then update the task's consensus (consensus_task_update:
    label, posterior, confidence; the task completes when dynamic overlap says so) and the person's
    counters.

    Locks the Task row (select_for_update) for the whole check-and-write, so double submits and
    people racing for the last slot are serialised. Idempotent on (user, idempotency_key): the same
    key again returns the first answer and created=False, whatever arrives second.

    An answer under the campaign's min_duration_ms is kept with is_too_fast set; it counts 0 in
    consensus.

    Returns:
        (answer, created).

    Raises:
        AnswerInvalid: bad fields (nothing written).
        AnnotatorPaused: an admin paused this person in this campaign (nothing written).
        AnswerConflict: code "idempotency_key_reused" (the key belongs to another answer),
            "already_answered", "task_complete", or "leased_to_other" (every remaining slot is
            reserved for other people).
        WrongCampaignKind: `task` is a product task of an attributes campaign (nothing written).
    """
    campaign_kind_require(task, Campaign.Kind.MATCH)
    choice, product, duration_ms, key = answer_validate(
        task=task, choice=choice, product_uuid=product_uuid, duration_ms=duration_ms, idempotency_key=idempotency_key
    )
    label = answer_label(task=task, choice=choice, product=product)
    now = timezone.now()
    with transaction.atomic():
        # of=("self",): lock the task only. Locking the joined campaign row too made every answer in a
        # campaign wait for the one before it on PostgreSQL (bench/api_latency.py's lock sampling).
        locked = Task.objects.select_for_update(of=("self",)).select_related("campaign").get(pk=task.pk)
        campaign = locked.campaign
        previous = Answer.objects.filter(annotator=user, idempotency_key=key).first()
        if previous is not None:
            if (
                previous.task_id != task.pk
                or previous.choice != choice
                or previous.product_id != getattr(product, "pk", None)
            ):
                raise AnswerConflict(
                    "idempotency_key_reused", "This idempotency key was already used for a different answer."
                )
            return previous, False
        stats = AnnotatorStats.objects.select_for_update().filter(campaign=campaign, annotator=user).first()
        if stats is not None and stats.is_paused:
            raise AnnotatorPaused()
        if Answer.objects.filter(task=locked, annotator=user, revoked_at__isnull=True).exists():
            raise AnswerConflict("already_answered", "You have already answered this task.")
        if locked.status == Task.Status.COMPLETE:
            raise AnswerConflict("task_complete", "This task already has all the answers it needs.")
        leases = Lease.objects.filter(task=locked, expires_at__gt=now)
        if not locked.is_gold and not leases.filter(annotator=user).exists():
            held_by_others = leases.exclude(annotator=user).count()
            needed = answers_needed(campaign=campaign, answer_count=locked.answer_count)
            if held_by_others >= needed or locked.answer_count + held_by_others >= campaign.overlap_max:
                raise AnswerConflict("leased_to_other", "This task is reserved for other annotators right now.")
        is_too_fast = duration_ms < campaign.min_duration_ms
        try:
            answer = Answer.objects.create(
                task=locked,
                annotator=user,
                choice=choice,
                product=product,
                label=label,
                is_too_fast=is_too_fast,
                duration_ms=duration_ms,
                idempotency_key=key,
            )
        except IntegrityError:
            # Reachable only when the same key is sent at once for two different tasks (two task
            # locks): report the key reuse rather than a 500. Leaving the atomic block by raising
            # rolls the whole transaction back.
            raise AnswerConflict("idempotency_key_reused", "This idempotency key was already used.") from None
        _stats_on_answer(stats=stats, user=user, campaign=campaign, label=label, is_too_fast=is_too_fast)
        consensus_task_update(task=locked, campaign=campaign, now=now)
        Lease.objects.filter(task=locked, annotator=user).delete()
    return answer, True


def answer_undo_last(*, user, campaign: Campaign) -> Task | None:
    """Revoke `user`'s most recent answer in `campaign` (within UNDO_WINDOW) and lease its task back
    to them, so it is their next task. The answer row is kept with revoked_at set; the task's
    consensus is updated without it (the task reopens if it no longer meets dynamic overlap).

    Locks the task row. Returns the task, or None when there is nothing to undo.
    """
    now = timezone.now()
    with transaction.atomic():
        answer = undo_candidate(user=user, campaign=campaign, now=now)
        if answer is None:
            return None
        task = Task.objects.select_for_update(of=("self",)).select_related("campaign").get(pk=answer.task_id)
        Answer.objects.filter(pk=answer.pk).update(revoked_at=now)
        _stats_on_undo(user=user, campaign=campaign)
        consensus_task_update(task=task, campaign=task.campaign, now=now)
        undone_task_lease_back(user=user, task=task, campaign=campaign, now=now)
        task.refresh_from_db()
    return task


def undo_candidate(*, user, campaign: Campaign, now) -> Answer | None:
    """`user`'s most recent live answer in `campaign` still inside UNDO_WINDOW, or None."""
    return (
        Answer.objects.filter(
            annotator=user, task__campaign=campaign, revoked_at__isnull=True, created_at__gte=now - UNDO_WINDOW
        )
        .order_by("-created_at", "-pk")
        .first()
    )


def _stats_on_undo(*, user, campaign: Campaign) -> None:
    """The person's counters without the undone answer (flags wait for the full recompute)."""
    AnnotatorStats.objects.filter(campaign=campaign, annotator=user, answer_count__gt=0).update(
        answer_count=F("answer_count") - 1, current_run_length=Greatest(F("current_run_length") - 1, Value(0))
    )


def undone_task_lease_back(*, user, task: Task, campaign: Campaign, now) -> None:
    """After an undo: the task reopens for its owner even if the others' answers settle it meanwhile,
    and it is leased back to them (their other leases in the campaign released), so it is their next
    task. Call inside the undo's transaction, the task locked."""
    Task.objects.filter(pk=task.pk).update(status=Task.Status.OPEN, completed_at=None)
    Lease.objects.filter(annotator=user, task__campaign=campaign).exclude(task=task).delete()
    Lease.objects.update_or_create(
        task=task, annotator=user, defaults={"expires_at": now + timedelta(seconds=campaign.lease_seconds)}
    )


# -- gold tasks and annotators -----------------------------------------------------------------------


def gold_set(*, task: Task, label: str, source: str = GoldLabel.Source.MANUAL, created_by=None) -> GoldLabel:
    """Make `task` a gold task with known answer `label` (a key of campaign.labels()), or change its
    known answer. The task leaves the regular queue and is mixed into people's queues as gold; its
    consensus is recomputed (posterior one-hot on the label) and the campaign marked dirty, so the
    next full recompute re-scores everyone's gold accuracy. Idempotent.

    Locks the task row.

    Raises:
        GoldInvalid: `label` is not one of the campaign's labels.
        WrongCampaignKind: `task` belongs to an attributes campaign (gold is for match campaigns).
    """
    campaign_kind_require(task, Campaign.Kind.MATCH)
    campaign = task.campaign
    if label not in campaign.labels():
        raise GoldInvalid(f"label must be one of {', '.join(campaign.labels())}")
    with transaction.atomic():
        locked = Task.objects.select_for_update(of=("self",)).select_related("campaign").get(pk=task.pk)
        gold, _ = GoldLabel.objects.update_or_create(
            task=locked, defaults={"label": label, "source": source, "created_by": created_by}
        )
        Task.objects.filter(pk=locked.pk).update(is_gold=True, status=Task.Status.OPEN, completed_at=None)
        locked.is_gold = True
        consensus_task_update(task=locked, campaign=locked.campaign)
    return gold


def gold_row_import(*, row: dict, created_by=None) -> str:
    """Import one gold row: `task` (the task's uuid), `choice` (product, none, not_a_product, unfit)
    and `product` (a candidate product's uuid, when choice is product). Returns "created",
    "updated" or "unchanged".

    Raises:
        RowInvalid: a missing or malformed value, an unknown task, or a product that is not one of
            the task's candidates.
    """
    from catalog.services import RowInvalid

    if "__error__" in row:
        raise RowInvalid(row["__error__"])
    missing = [name for name in ("task", "choice") if not row.get(name)]
    if missing:
        raise RowInvalid(f"missing value for {', '.join(missing)}")
    try:
        task = Task.objects.select_related("campaign").prefetch_related("candidates__product").get(uuid=row["task"])
    except (Task.DoesNotExist, ValueError, ValidationError):
        raise RowInvalid(f"no task {row['task']!r}") from None
    try:
        label = choice_label(task=task, choice=row["choice"], product_uuid=row.get("product") or None)
    except AnswerInvalid as exc:
        raise RowInvalid(str(exc)) from None
    previous = GoldLabel.objects.filter(task=task).values_list("label", flat=True).first()
    if previous == label:
        return "unchanged"
    gold_set(task=task, label=label, source=GoldLabel.Source.IMPORT, created_by=created_by)
    return "created" if previous is None else "updated"


def gold_import(*, path, progress=None, created_by=None):
    """Import gold answers from a CSV or JSONL manifest (columns task, choice, product; see
    gold_row_import). Idempotent: a row whose task already has that gold answer changes nothing.
    Each row is one transaction; a bad row is reported with its line number and the others go on.

    Returns:
        catalog.services.ImportReport.

    Raises:
        catalog.services.ManifestError: unreadable file, unknown format, missing columns.
    """
    from catalog.services import ImportReport, RowError, RowInvalid, manifest_rows

    report = ImportReport()
    for line, row in manifest_rows(path, required=("task", "choice")):
        try:
            report.count(gold_row_import(row=row, created_by=created_by))
        except RowInvalid as exc:
            report.errors.append(RowError(line, str(exc)))
        if progress:
            progress(1)
    return report


def gold_clear(*, task: Task) -> bool:
    """Turn a gold task back into a regular one (its answers stay). Returns whether it was gold."""
    with transaction.atomic():
        locked = Task.objects.select_for_update(of=("self",)).select_related("campaign").get(pk=task.pk)
        deleted, _ = GoldLabel.objects.filter(task=locked).delete()
        Task.objects.filter(pk=locked.pk).update(is_gold=False)
        locked.is_gold = False
        consensus_task_update(task=locked, campaign=locked.campaign)
    return bool(deleted)


def consensus_recompute_queue(*, campaign: Campaign) -> None:
    """Queue a full consensus recompute of `campaign` after the transaction commits (Celery). The
    campaign is marked dirty first, so a message lost to a broker outage is made up for by the beat's
    consensus_recompute_dirty within a minute of the broker coming back."""
    from .tasks import consensus_recompute_task

    Campaign.objects.filter(pk=campaign.pk).update(consensus_dirty=True)
    send_on_commit(consensus_recompute_task.si(campaign.pk))


def annotator_pause(*, campaign: Campaign, annotator, paused: bool, by=None) -> AnnotatorStats:
    """Pause (or resume) `annotator` in `campaign`. A paused person gets no tasks and cannot answer;
    their past answers stay and count with campaign.paused_vote_weight from the next full
    recompute, which this marks due. Their leases are released. Idempotent."""
    with transaction.atomic():
        stats, _ = AnnotatorStats.objects.select_for_update().get_or_create(campaign=campaign, annotator=annotator)
        stats.is_paused = paused
        stats.paused_at = timezone.now() if paused else None
        stats.paused_by = by if paused else None
        stats.save(update_fields=["is_paused", "paused_at", "paused_by"])
        if paused:
            Lease.objects.filter(annotator=annotator, task__campaign=campaign).delete()
        Campaign.objects.filter(pk=campaign.pk).update(consensus_dirty=True)
    return stats


def gold_mark_demo(*, campaign: Campaign, count: int, seed: int = 0) -> int:
    """Demo only: make `count` tasks of `campaign` gold, their known answer taken from the generated
    photos' ground truth (catalog.fashion_mnist.demo_truth_for): the true product's rank when the
    model suggested it, "none" when it did not (or the product is not in the catalog), and
    "not_a_product". Up to half the sample is drawn from tasks whose true product is among the
    candidates, so that gold checks are not all "none". Deterministic for a seed; idempotent (tasks
    already gold count towards `count`). Returns the number of tasks newly marked.
    """
    from catalog.fashion_mnist import demo_truth_for

    have = Task.objects.filter(campaign=campaign, is_gold=True).count()
    if have >= count:
        return 0
    tasks = list(Task.objects.filter(campaign=campaign, is_gold=False, answer_count=0).order_by("pk"))
    truth = demo_truth_for(t.photo_id for t in tasks)
    ranks = {
        (task_id, product_id): rank
        for task_id, product_id, rank in TaskCandidate.objects.filter(task__in=tasks).values_list(
            "task_id", "product_id", "rank"
        )
    }
    positives, others = [], []
    for task in tasks:
        if task.photo_id not in truth:
            continue
        kind, product_id = truth[task.photo_id]
        if kind == "not_a_product":
            others.append((task, "not_a_product"))
        elif (task.pk, product_id) in ranks:
            positives.append((task, str(ranks[task.pk, product_id])))
        else:
            others.append((task, "none"))
    rng = random.Random(seed)
    rng.shuffle(positives)
    rng.shuffle(others)
    wanted = count - have
    sample = positives[: wanted // 2]
    sample += others[: wanted - len(sample)]
    for task, label in sample:
        gold_set(task=task, label=label, source=GoldLabel.Source.DEMO)
    return len(sample)
