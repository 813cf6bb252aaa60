"""Consensus on the database: the per-task update after each answer, and the full recompute over a
campaign (EM) that Celery beat runs for campaigns whose answers changed.

Rows become arrays here and arrays become rows; the maths is in `annotate.consensus.em`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from ..models import AnnotatorStats, Answer, Campaign, ConsensusMethod, GoldLabel, Task, TaskCandidate
from . import em

if TYPE_CHECKING:
    from annotate.tagging import TagRecomputeReport

logger = logging.getLogger(__name__)

MODEL_VOTER = "model"  # the key of the model voter's parameters in Campaign.consensus_params
WRITE_BATCH = 5_000


# -- parameters -------------------------------------------------------------------------------------


@dataclass
class Params:
    """What the per-task update needs from the last full recompute (or defaults before one).

    Attributes:
        labels: the K label keys, in class-index order.
        class_prior: (K,) float64.
        pooled: (K, K) float64, the crowd's confusion matrix (used for people without a matrix of
            their own and for the router's expected gain).
        model_confusion: (K, K) float64, the model voter's learned matrix, or None.
    """

    labels: list[str]
    class_prior: np.ndarray
    pooled: np.ndarray
    model_confusion: np.ndarray | None

    @classmethod
    def of(cls, campaign: Campaign) -> Params:
        labels = campaign.labels()
        K = len(labels)
        stored = campaign.consensus_params or {}
        if stored.get("labels") == labels:
            model = stored.get(MODEL_VOTER)
            return cls(
                labels,
                np.asarray(stored["class_prior"], dtype=np.float64),
                np.asarray(stored["pooled"], dtype=np.float64),
                np.asarray(model, dtype=np.float64) if model else None,
            )
        return cls(labels, np.full(K, 1.0 / K), em.default_pooled(K), None)


def _confusion_of(stats: AnnotatorStats | None, params: Params) -> np.ndarray:
    K = len(params.labels)
    if stats is not None and stats.confusion and len(stats.confusion) == K:
        return np.asarray(stats.confusion, dtype=np.float64)
    return params.pooled


def annotator_vote_weight(stats: AnnotatorStats | None, campaign: Campaign) -> float:
    """How much a person's votes count, in [0, 1]: campaign.paused_vote_weight when an admin paused
    them, else 1. Their past answers stay; they only weigh less.

    Flags do not change the weight (issue 15): the model already learns each person's reliability
    from gold and agreement, so a fixed factor on top counted the same evidence twice. A flag is a
    signal for admins; pausing is their decision. (The former Campaign.flagged_vote_weight is gone:
    migration annotate 0012.)"""
    if stats is not None and stats.is_paused:
        return campaign.paused_vote_weight
    return 1.0


def model_vote(campaign: Campaign, top_score: float | None) -> str | None:
    """The model voter's label for a task whose best candidate has cosine `top_score`: "1" at or above
    campaign.model_vote_min_score, else "none". None when the campaign does not use the model voter."""
    if not campaign.model_votes or top_score is None:
        return None
    return "1" if top_score >= campaign.model_vote_min_score else "none"


def is_settled(*, campaign: Campaign, answer_count, confidence):
    """Dynamic overlap: a task stops collecting answers once it has overlap_min answers and its
    confidence reaches confidence_target, or once it has overlap_max answers. Takes and returns
    scalars or numpy arrays (answer_count int, confidence float in [0, 1]; elementwise bool)."""
    answer_count = np.asarray(answer_count)
    return (answer_count >= campaign.overlap_max) | (
        (answer_count >= campaign.overlap_min) & (np.asarray(confidence) >= campaign.confidence_target)
    )


def answers_needed(*, campaign: Campaign, answer_count: int) -> int:
    """How many more answers an open task wants at least: up to overlap_min, else one."""
    return max(campaign.overlap_min - answer_count, 1)


def task_priority(
    *, campaign: Campaign, posterior: np.ndarray, pooled: np.ndarray, answer_count: np.ndarray
) -> np.ndarray:
    """Routing priority in 0..100 of each task: 100 x the probability that one more answer settles
    it by dynamic overlap (`em.settle_probability`; 1 when the next answer reaches overlap_max, 0
    while it cannot reach overlap_min). The router serves the highest first; ties go in the
    session's shuffled order.

    Args:
        posterior: (T, K) float64; pooled: (K, K) float64; answer_count: (T,) int64 human answers.

    Returns:
        (T,) int64.
    """
    answer_count = np.atleast_1d(answer_count)
    probability = em.settle_probability(np.atleast_2d(posterior), pooled, campaign.confidence_target)
    probability = np.where(answer_count + 1 >= campaign.overlap_max, 1.0, probability)
    probability = np.where(answer_count + 1 < campaign.overlap_min, 0.0, probability)
    return np.rint(probability * 100).astype(np.int64)


# -- per-task update --------------------------------------------------------------------------------


def consensus_task_update(*, task: Task, campaign: Campaign, now=None) -> Task:
    """Recompute one task's consensus from its live answers with the annotators' stored confusion
    matrices (the E-step of the last full EM, `em.task_posterior`), then its status by dynamic
    overlap and its routing priority; bump consensus_version and mark the campaign dirty for the
    next full recompute.

    Call inside the transaction that changed the task's answers, with the task row locked. Three
    queries and two updates. Returns the task with the new values set.
    """
    now = now or timezone.now()
    params = Params.of(campaign)
    index = {label: i for i, label in enumerate(params.labels)}
    answers = list(
        Answer.objects.filter(task=task, revoked_at__isnull=True).values_list("annotator_id", "label", "is_too_fast")
    )
    stats = {
        s.annotator_id: s
        for s in AnnotatorStats.objects.filter(campaign=campaign, annotator_id__in=[a[0] for a in answers])
    }
    gold = GoldLabel.objects.filter(task=task).values_list("label", flat=True).first() if task.is_gold else None
    labels = [index[label] for _, label, _ in answers]
    weights = [0.0 if too_fast else annotator_vote_weight(stats.get(user), campaign) for user, _, too_fast in answers]
    rows = [_confusion_of(stats.get(user), params) for user, _, _ in answers]
    if campaign.model_votes and params.model_confusion is not None:
        top = TaskCandidate.objects.filter(task=task, rank=1).values_list("score", flat=True).first()
        vote = model_vote(campaign, top)
        if vote is not None:
            labels.append(index[vote])
            weights.append(1.0)
            rows.append(params.model_confusion)
    if campaign.consensus_method == ConsensusMethod.MAJORITY_VOTE and gold is None:
        votes = np.zeros(len(params.labels))
        np.add.at(votes, np.asarray(labels, dtype=np.int64), np.asarray(weights))
        posterior = votes / votes.sum() if votes.sum() > 0 else params.class_prior.copy()
    else:
        posterior = em.task_posterior(
            np.asarray(labels, dtype=np.int64),
            np.asarray(rows).reshape(len(rows), len(params.labels), len(params.labels)),
            params.class_prior,
            vote_weight=np.asarray(weights),
            gold_label=None if gold is None else index[gold],
        )
    human_count = len(answers)
    _apply(task, campaign, params, posterior, human_count, now=now, weighed=sum(weights) > 0)
    Task.objects.filter(pk=task.pk).update(
        answer_count=human_count,
        label=task.label,
        posterior=task.posterior,
        confidence=task.confidence,
        status=task.status,
        completed_at=task.completed_at,
        priority=task.priority,
        consensus_version=F("consensus_version") + 1,
    )
    # Conditional, so that a campaign already marked is not written (nor locked) by every answer.
    Campaign.objects.filter(pk=campaign.pk, consensus_dirty=False).update(consensus_dirty=True)
    from gamify.services import points_settle_task  # answers' points follow the label (gamify.rules)

    points_settle_task(task=task, campaign=campaign, now=now)
    return task


def _apply(
    task: Task, campaign: Campaign, params: Params, posterior: np.ndarray, human_count: int, *, now, weighed=True
) -> None:
    """Set label, posterior, confidence, status, completed_at and priority on `task` (not saved).
    A task none of whose answers weighs anything (`weighed` False: every one too fast, or from people
    weighted 0) keeps no label and stays open: its posterior is only the class prior."""
    best = int(posterior.argmax())
    task.answer_count = human_count
    task.posterior = {label: round(float(p), 6) for label, p in zip(params.labels, posterior, strict=True)}
    task.confidence = float(posterior[best])
    task.label = params.labels[best] if ((human_count and weighed) or task.is_gold) else ""
    settled = (
        not task.is_gold
        and weighed
        and bool(is_settled(campaign=campaign, answer_count=human_count, confidence=task.confidence))
    )
    if settled and task.status != Task.Status.COMPLETE:
        task.completed_at = now
    elif not settled:
        task.completed_at = None
    task.status = Task.Status.COMPLETE if settled else Task.Status.OPEN
    task.priority = int(
        task_priority(campaign=campaign, posterior=posterior, pooled=params.pooled, answer_count=human_count)[0]
    )


# -- full recompute ---------------------------------------------------------------------------------


@dataclass
class RecomputeReport:
    """What a full recompute did. Durations in seconds."""

    campaign_id: int
    answer_count: int
    task_count: int
    annotator_count: int
    n_iter: int
    tasks_written: int
    tasks_skipped: int
    load_s: float
    fit_s: float
    write_s: float


def _load_answers(campaign: Campaign):
    """Live answers of the campaign with their task's consensus_version, in one statement (one
    snapshot). Returns a dict of numpy arrays, ordered by annotator then time."""
    sql = (
        "SELECT a.task_id, t.consensus_version, a.annotator_id, a.label, a.is_too_fast, a.duration_ms "
        "FROM annotate_answer a JOIN annotate_task t ON t.id = a.task_id "
        "WHERE t.campaign_id = %s AND a.revoked_at IS NULL ORDER BY a.annotator_id, a.created_at, a.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [campaign.pk])
        rows = cursor.fetchall()
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return {
            "task": empty,
            "version": empty,
            "user": empty,
            "label": [],
            "too_fast": empty.astype(bool),
            "duration": empty,
        }
    task, version, user, label, too_fast, duration = zip(*rows, strict=True)
    return {
        "task": np.asarray(task, dtype=np.int64),
        "version": np.asarray(version, dtype=np.int64),
        "user": np.asarray(user, dtype=np.int64),
        "label": label,
        "too_fast": np.asarray(too_fast, dtype=bool),
        "duration": np.asarray(duration, dtype=np.int64),
    }


def consensus_recompute(*, campaign_id: int) -> RecomputeReport | TagRecomputeReport | None:
    """Full consensus over a campaign: EM over all live answers (the campaign's method, gold tasks
    clamped, too-fast answers weighted 0, paused people tempered, the model voter if
    enabled), then every answered or gold task's label, posterior, confidence, status and priority,
    the unanswered tasks' priority, each annotator's stats and flags, and the campaign's parameters.

    Idempotent and safe to run twice or beside live answering: EM is deterministic, and a task is
    written only if its consensus_version is still the one read with its answers (one UPDATE per
    task, conditional); a task answered meanwhile keeps its per-task update and the campaign stays
    dirty for the next run. Stats rows are upserted; is_paused is never touched.

    An attribute campaign goes to annotate.tagging.tag_consensus_recompute (reliability per
    attribute) and returns its TagRecomputeReport.

    Returns:
        RecomputeReport, or None when the campaign no longer exists.
    """
    import time

    started = time.perf_counter()
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        logger.warning("campaign %s no longer exists", campaign_id)
        return None
    if campaign.kind != Campaign.Kind.MATCH:
        # Attribute campaigns: each tagger's reliability per attribute, then every product's labels.
        from annotate.tagging import tag_consensus_recompute

        return tag_consensus_recompute(campaign=campaign)
    now = timezone.now()
    labels = campaign.labels()
    K = len(labels)
    index = {label: i for i, label in enumerate(labels)}
    # Gold first, answers second: a gold task answered in between then carries a newer version than
    # the one read here and is skipped, never overwritten with stale values.
    gold_versions = {}
    gold_rows = {}
    for task_id, label, version in GoldLabel.objects.filter(task__campaign=campaign).values_list(
        "task_id", "label", "task__consensus_version"
    ):
        gold_rows[task_id] = label
        gold_versions[task_id] = version
    data = _load_answers(campaign)
    stats_rows = {s.annotator_id: s for s in AnnotatorStats.objects.filter(campaign=campaign)}

    task_ids, task_idx = np.unique(
        np.concatenate([data["task"], np.fromiter(gold_rows, dtype=np.int64)]), return_inverse=True
    )
    answer_task_idx = task_idx[: len(data["task"])]
    user_ids, worker_idx = np.unique(data["user"], return_inverse=True)
    label_idx = np.fromiter((index[label] for label in data["label"]), dtype=np.int64, count=len(data["label"]))
    weight = np.where(data["too_fast"], 0.0, 1.0)
    vote_weight = np.array([annotator_vote_weight(stats_rows.get(int(u)), campaign) for u in user_ids] + [1.0])
    gold = {int(np.searchsorted(task_ids, tid)): index[label] for tid, label in gold_rows.items() if label in index}

    # The model voter: one more worker (index len(user_ids)), never counted as a human answer.
    model_task_idx = np.zeros(0, dtype=np.int64)
    model_labels = np.zeros(0, dtype=np.int64)
    if campaign.model_votes and len(task_ids):
        scores = dict(TaskCandidate.objects.filter(task__campaign=campaign, rank=1).values_list("task_id", "score"))
        votes = [(i, model_vote(campaign, scores.get(int(tid)))) for i, tid in enumerate(task_ids)]
        votes = [(i, index[v]) for i, v in votes if v is not None]
        if votes:
            model_task_idx, model_labels = (np.asarray(x, dtype=np.int64) for x in zip(*votes, strict=True))
    n_workers = len(user_ids) + 1
    answers = em.AnswerArrays.build(
        np.concatenate([answer_task_idx, model_task_idx]),
        np.concatenate([worker_idx, np.full(len(model_task_idx), len(user_ids))]),
        np.concatenate([label_idx, model_labels]),
        weight=np.concatenate([weight, np.ones(len(model_task_idx))]),
        n_tasks=len(task_ids),
        n_workers=n_workers,
        n_classes=K,
    )
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    if campaign.consensus_method == ConsensusMethod.MAJORITY_VOTE:
        result = em.majority_vote(answers, gold=gold)
    else:
        result = em.dawid_skene(
            answers,
            gold=gold,
            worker_vote_weight=vote_weight,
            one_coin=campaign.consensus_method == ConsensusMethod.ONE_COIN,
        )
    fit_s = time.perf_counter() - started

    started = time.perf_counter()
    human_counts = np.bincount(answer_task_idx, minlength=len(task_ids))
    versions = np.zeros(len(task_ids), dtype=np.int64)
    for tid, version in gold_versions.items():
        versions[np.searchsorted(task_ids, tid)] = version
    versions[answer_task_idx] = data["version"]
    is_gold = np.zeros(len(task_ids), dtype=bool)
    is_gold[list(gold)] = True
    # Tasks whose answers all weigh 0 (too fast, or people weighted 0) keep no label (_tasks_write).
    worker_weight = vote_weight if campaign.consensus_method != ConsensusMethod.MAJORITY_VOTE else np.ones(n_workers)
    weighed = np.bincount(answers.task, weights=answers.weight * worker_weight[answers.worker], minlength=len(task_ids))
    written, skipped = _tasks_write(
        campaign, labels, task_ids, versions, human_counts, is_gold, result, now=now, weighed=weighed > 0
    )
    _unanswered_priority(campaign, result)
    _stats_write(
        campaign, labels, data, user_ids, worker_idx, answer_task_idx, label_idx, gold, result, stats_rows, now=now
    )
    from gamify.services import points_recompute_after  # gold answers, changed flags

    points_recompute_after(campaign_id=campaign.pk)
    params = {
        "labels": labels,
        "method": campaign.consensus_method,
        "class_prior": result.class_prior.round(6).tolist(),
        "pooled": result.pooled.round(6).tolist(),
        "n_iter": result.n_iter,
        "objective": None if result.trace is None else round(result.trace.objective[-1], 6),
        "converged": None if result.trace is None else result.trace.converged,
        "answer_count": len(data["task"]),
        MODEL_VOTER: result.confusion[-1].round(6).tolist() if len(model_task_idx) else None,
    }
    Campaign.objects.filter(pk=campaign.pk).update(consensus_params=params, consensus_computed_at=now)
    write_s = time.perf_counter() - started
    report = RecomputeReport(
        campaign.pk,
        len(data["task"]),
        len(task_ids),
        len(user_ids),
        result.n_iter,
        written,
        skipped,
        load_s,
        fit_s,
        write_s,
    )
    logger.info("consensus recompute %s", report)
    return report


def _tasks_write(
    campaign, labels, task_ids, versions, human_counts, is_gold, result, *, now, weighed=None
) -> tuple[int, int]:
    """Write label, posterior, confidence, status, completed_at and priority of each task, if its
    consensus_version is unchanged. A task that is not `weighed` ((T,) bool: some answer weighs more
    than 0) and not gold gets no label and stays open. Returns (written, skipped)."""
    confidence = result.confidence
    weighed = np.ones(len(task_ids), dtype=bool) if weighed is None else weighed
    settled = is_settled(campaign=campaign, answer_count=human_counts, confidence=confidence) & ~is_gold & weighed
    priority = task_priority(
        campaign=campaign, posterior=result.posterior, pooled=result.pooled, answer_count=human_counts
    )
    posterior = result.posterior.round(6)
    label_names = np.asarray(labels, dtype=object)[result.label]
    label_names[~weighed & ~is_gold] = ""
    sql = (
        "UPDATE annotate_task SET answer_count = %s, label = %s, posterior = %s, confidence = %s, status = %s, "
        "completed_at = CASE WHEN %s THEN COALESCE(completed_at, %s) ELSE NULL END, priority = %s "
        "WHERE id = %s AND consensus_version = %s"
    )
    from django.db.models import JSONField

    from gamify import services as gamify

    encode = JSONField().get_db_prep_value
    written = 0
    complete, open_ = Task.Status.COMPLETE.value, Task.Status.OPEN.value
    for start in range(0, len(task_ids), WRITE_BATCH):
        stop = min(start + WRITE_BATCH, len(task_ids))
        params = []
        for i in range(start, stop):
            post = dict(zip(labels, posterior[i].tolist(), strict=True))
            params.append(
                (
                    int(human_counts[i]),
                    str(label_names[i]),
                    encode(post, connection),
                    float(confidence[i]),
                    complete if settled[i] else open_,
                    bool(settled[i]),
                    now,
                    int(priority[i]),
                    int(task_ids[i]),
                    int(versions[i]),
                )
            )
        with transaction.atomic(), connection.cursor() as cursor:
            before = gamify.tasks_label_status(task_ids[start:stop].tolist())
            cursor.executemany(sql, params)
            # executemany's rowcount is the total on both backends we run (sqlite3, psycopg 3).
            written += max(cursor.rowcount, 0)
            # Points follow the labels that changed, one batch per batch of tasks.
            gamify.points_settle_changed(before=before, after={p[8]: (p[1], p[4]) for p in params}, now=now)
    return written, len(task_ids) - written


def _unanswered_priority(campaign: Campaign, result: em.Consensus) -> None:
    """Tasks nobody has answered share one posterior (the class prior): one UPDATE for all of them."""
    priority = int(
        task_priority(campaign=campaign, posterior=result.class_prior, pooled=result.pooled, answer_count=0)[0]
    )
    Task.objects.filter(campaign=campaign, answer_count=0, is_gold=False, consensus_version=0).exclude(
        priority=priority
    ).update(priority=priority)


def _longest_runs(
    user: np.ndarray, label_idx: np.ndarray
) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """Per user (answers ordered by user, then time): the longest run of one label and the current
    (last) run, each as (label index, length)."""
    longest: dict[int, tuple[int, int]] = {}
    current: dict[int, tuple[int, int]] = {}
    if not len(user):
        return longest, current
    boundary = np.ones(len(user), dtype=bool)
    boundary[1:] = (user[1:] != user[:-1]) | (label_idx[1:] != label_idx[:-1])
    starts = np.flatnonzero(boundary)
    lengths = np.diff(np.append(starts, len(user)))
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        u = int(user[start])
        if length > longest.get(u, (0, 0))[1]:
            longest[u] = (int(label_idx[start]), length)
        current[u] = (int(label_idx[start]), length)
    return longest, current


RUN_FLAG_PROBABILITY = 1e-3


def gold_reveal(*, campaign: Campaign, stats: list[AnnotatorStats], now) -> None:
    """Move each person's revealed gold record (AnnotatorStats.gold_shown_*) forward, in place.

    A person's gold answers are revealed up to `gold_shown_through`. That point moves to their latest
    gold answer older than the undo window (services.UNDO_WINDOW) only once at least
    AnnotatorStats.GOLD_REVEAL_BATCH gold answers lie between it and the old point, so a page that
    shows gold numbers (or the points and badges that gold answers earn) changes only after five new
    checks at once, never within the undo window, and never tells which answer was a check. The
    counts are then recounted over every live gold answer up to the point, against today's known
    answers. One query (the campaign's live gold answers)."""
    from ..services import UNDO_WINDOW

    known = dict(GoldLabel.objects.filter(task__campaign=campaign).values_list("task_id", "label"))
    by_person: dict[int, list[tuple]] = {}
    rows = (
        Answer.objects.filter(task_id__in=list(known), revoked_at__isnull=True)
        .order_by("annotator_id", "created_at", "pk")
        .values_list("annotator_id", "created_at", "task_id", "label")
    )
    for annotator_id, created_at, task_id, label in rows:
        by_person.setdefault(annotator_id, []).append((created_at, label == known[task_id]))
    settled_before = now - UNDO_WINDOW
    for row in stats:
        answers = by_person.get(row.annotator_id, [])
        through = row.gold_shown_through
        past_undo = [created for created, _ in answers if created <= settled_before]
        new = [created for created in past_undo if through is None or created > through]
        if len(new) >= AnnotatorStats.GOLD_REVEAL_BATCH:
            through = past_undo[-1]
        shown = [correct for created, correct in answers if through is not None and created <= through]
        row.gold_shown_through = through
        row.gold_shown_answer_count = len(shown)
        row.gold_shown_correct_count = sum(shown)


def annotator_flags(*, stats: AnnotatorStats, campaign: Campaign, run_probability: float | None = None) -> list[str]:
    """The flags a person's numbers raise (AnnotatorStats.Flag values):
    - gold_accuracy_low: at least gold_min_answers revealed gold answers (gold_reveal: the person
      sees their flags, so the flag moves only with the revealed record) and smoothed gold accuracy
      over them under gold_min_accuracy;
    - too_fast: at least 5 answers under min_duration_ms, making up 20% or more of their answers;
    - same_option_run: a run of at least same_option_run_limit identical options that the campaign's
      labels make unlikely: run_probability (the class prior of that option to the power of the run
      length) under RUN_FLAG_PROBABILITY. Twenty "1"s in a row where the model's first suggestion is
      nearly always right is no spam; twenty "none"s where a third of tasks are "none" is.
    """
    flags = []
    gold_accuracy = stats.gold_shown_accuracy
    if (
        stats.gold_shown_answer_count >= campaign.gold_min_answers
        and gold_accuracy is not None
        and gold_accuracy < campaign.gold_min_accuracy
    ):
        flags.append(AnnotatorStats.Flag.GOLD_ACCURACY_LOW.value)
    if stats.too_fast_count >= 5 and stats.too_fast_count >= 0.2 * max(stats.answer_count, 1):
        flags.append(AnnotatorStats.Flag.TOO_FAST.value)
    if stats.longest_run_length >= campaign.same_option_run_limit and (
        run_probability is None or run_probability < RUN_FLAG_PROBABILITY
    ):
        flags.append(AnnotatorStats.Flag.SAME_OPTION_RUN.value)
    return flags


def _stats_write(
    campaign, labels, data, user_ids, worker_idx, answer_task_idx, label_idx, gold, result, stats_rows, *, now
) -> None:
    """Upsert every answering person's AnnotatorStats from this recompute."""
    W = len(user_ids)
    if not W:
        return
    answer_count = np.bincount(worker_idx, minlength=W)
    too_fast = np.bincount(worker_idx, weights=data["too_fast"].astype(float), minlength=W).astype(int)
    gold_task = np.full(result.posterior.shape[0], -1)
    for t, k in gold.items():
        gold_task[t] = k
    answer_gold = gold_task[answer_task_idx]
    on_gold = answer_gold >= 0
    gold_total = np.bincount(worker_idx[on_gold], minlength=W)
    gold_correct = np.bincount(worker_idx[on_gold & (answer_gold == label_idx)], minlength=W)
    per_task = np.bincount(answer_task_idx, minlength=result.posterior.shape[0])
    multi = (per_task[answer_task_idx] >= 2) & ~on_gold
    agree_total = np.bincount(worker_idx[multi], minlength=W)
    agree = np.bincount(worker_idx[multi & (result.label[answer_task_idx] == label_idx)], minlength=W)
    reliability = result.reliability()
    order = np.argsort(worker_idx, kind="stable")
    bounds = np.searchsorted(worker_idx[order], np.arange(W + 1))
    durations = data["duration"][order]
    longest, current = _longest_runs(data["user"], label_idx)
    rows = [
        stats_rows.get(user_id) or AnnotatorStats(campaign=campaign, annotator_id=user_id)
        for user_id in user_ids.tolist()
    ]
    gold_reveal(campaign=campaign, stats=rows, now=now)
    for w, user_id in enumerate(user_ids.tolist()):
        stats = rows[w]
        run_label, run_length = current.get(user_id, (None, 0))
        stats.answer_count = int(answer_count[w])
        stats.too_fast_count = int(too_fast[w])
        stats.gold_answer_count = int(gold_total[w])
        stats.gold_correct_count = int(gold_correct[w])
        stats.agreement_total = int(agree_total[w])
        stats.agreement_count = int(agree[w])
        stats.reliability = round(float(reliability[w]), 6)
        stats.confusion = result.confusion[w].round(6).tolist()
        stats.median_duration_ms = int(np.median(durations[bounds[w] : bounds[w + 1]]))
        longest_label, longest_length = longest.get(user_id, (0, 0))
        stats.longest_run_length = longest_length
        stats.current_run_label = labels[run_label] if run_label is not None else ""
        stats.current_run_length = run_length
        run_probability = float(result.class_prior[longest_label]) ** longest_length
        stats.flags = annotator_flags(stats=stats, campaign=campaign, run_probability=run_probability)
        stats.computed_at = now
    fields = [
        "answer_count",
        "too_fast_count",
        "gold_answer_count",
        "gold_correct_count",
        "gold_shown_answer_count",
        "gold_shown_correct_count",
        "gold_shown_through",
        "agreement_total",
        "agreement_count",
        "reliability",
        "confusion",
        "median_duration_ms",
        "longest_run_length",
        "current_run_label",
        "current_run_length",
        "flags",
        "computed_at",
    ]
    AnnotatorStats.objects.bulk_create(
        rows, batch_size=1000, update_conflicts=True, unique_fields=["campaign", "annotator"], update_fields=fields
    )


# -- driving the recompute --------------------------------------------------------------------------


def consensus_recompute_dirty() -> list[RecomputeReport]:
    """Recompute every campaign marked dirty. Each is claimed by a conditional update (dirty → clean)
    first, so two runs at once never both take the same campaign; answers arriving during the run
    mark it dirty again for the next one. A failed run marks it dirty again and re-raises."""
    reports = []
    for campaign_id in Campaign.objects.filter(consensus_dirty=True).values_list("pk", flat=True):
        if not Campaign.objects.filter(pk=campaign_id, consensus_dirty=True).update(consensus_dirty=False):
            continue
        try:
            report = consensus_recompute(campaign_id=campaign_id)
        except Exception:
            Campaign.objects.filter(pk=campaign_id).update(consensus_dirty=True)
            raise
        if report is not None:
            reports.append(report)
    return reports
