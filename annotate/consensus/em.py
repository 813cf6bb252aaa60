"""Consensus maths on plain arrays: weighted majority vote and Dawid-Skene EM with shrinkage, gold
clamping and answer weights. No Django here; `annotate.consensus.services` turns rows into arrays.

Shapes used throughout: N answers, T tasks, W annotators (workers), K classes (options).
An answer set is three int64 arrays of length N (task index in [0, T), worker index in [0, W),
label index in [0, K)) plus an optional float64 weight per answer in [0, 1].

Why our own EM rather than Crowd-Kit's `DawidSkene`: the router needs what Crowd-Kit 1.4.2 does not
offer: gold tasks with known labels clamped during EM (semi-supervised DS), per-answer weights (an
answer under the human-speed floor counts 0), per-annotator tempering of votes (paused or flagged
people), shrinkage of each annotator's confusion matrix towards their own one-coin matrix (people
with ten answers do not get a ten-answer K x K matrix of their own), a per-task E-step for the
incremental update after each answer, and speed: one EM over 1,000,000 answers in seconds.
`bench/consensus.py` compares ours with Crowd-Kit's majority vote, Wawa, Dawid-Skene, GLAD and MACE
on the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Prior on the pooled confusion matrix: each true-class row starts as POOLED_PRIOR_ANSWERS pseudo
# answers, POOLED_PRIOR_ACCURACY of them correct. Keeps classes from swapping names in EM (label
# switching) and gives a campaign with no answers yet a sane starting point.
POOLED_PRIOR_ACCURACY = 0.7
POOLED_PRIOR_ANSWERS = 4.0
# Each annotator's accuracy is pulled towards the crowd's with this many pseudo answers.
COIN_SHRINKAGE_ANSWERS = 2.0
# Dirichlet pseudo-count on every class of the class prior.
CLASS_PRIOR_COUNT = 1.0


@dataclass(frozen=True)
class AnswerArrays:
    """Answers as index arrays.

    Attributes:
        task: (N,) int64, task index in [0, n_tasks).
        worker: (N,) int64, annotator index in [0, n_workers).
        label: (N,) int64, class index in [0, n_classes).
        weight: (N,) float64 in [0, 1]; how much each answer counts (1 = fully, 0 = not at all).
        n_tasks, n_workers, n_classes: T, W, K.
    """

    task: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    n_tasks: int
    n_workers: int
    n_classes: int

    @classmethod
    def build(cls, task, worker, label, *, n_tasks: int, n_workers: int, n_classes: int, weight=None):
        """Validate and wrap the arrays.

        Raises:
            ValueError: lengths differ, an index is out of range, or a weight is outside [0, 1].
        """
        task = np.asarray(task, dtype=np.int64)
        worker = np.asarray(worker, dtype=np.int64)
        label = np.asarray(label, dtype=np.int64)
        weight = np.ones(len(task)) if weight is None else np.asarray(weight, dtype=np.float64)
        if not (len(task) == len(worker) == len(label) == len(weight)):
            raise ValueError("task, worker, label and weight must have the same length")
        for name, values, upper in (
            ("task", task, n_tasks),
            ("worker", worker, n_workers),
            ("label", label, n_classes),
        ):
            if len(values) and (values.min() < 0 or values.max() >= upper):
                raise ValueError(f"{name} index out of range [0, {upper})")
        if len(weight) and (weight.min() < 0 or weight.max() > 1 or np.isnan(weight).any()):
            raise ValueError("weights must lie in [0, 1]")
        if n_classes < 2:
            raise ValueError("at least two classes are needed")
        return cls(task, worker, label, weight, int(n_tasks), int(n_workers), int(n_classes))

    def __len__(self) -> int:
        return len(self.task)


@dataclass
class Consensus:
    """The result of an aggregation.

    Attributes:
        posterior: (T, K) float64, each row a distribution over classes (rows of tasks without
            answers hold the class prior).
        label: (T,) int64, argmax of the posterior; ties go to the lowest class index.
        confidence: (T,) float64 in [0, 1], the posterior of the chosen label.
        confusion: (W, K, K) float64; confusion[w, k, l] = P(annotator w answers l | true class k).
            For majority vote, the pooled matrix repeated.
        pooled: (K, K) float64, the confusion matrix of the crowd as a whole.
        class_prior: (K,) float64.
        n_iter: EM iterations run (0 for majority vote).
        log_likelihood: log marginal likelihood of the answers under the final parameters.
    """

    posterior: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    confusion: np.ndarray
    pooled: np.ndarray
    class_prior: np.ndarray
    n_iter: int = 0
    log_likelihood: float = float("nan")

    def reliability(self) -> np.ndarray:
        """(W,) float64 in [0, 1]: each annotator's expected accuracy, sum_k prior_k * confusion[w, k, k]."""
        diag = np.diagonal(self.confusion, axis1=1, axis2=2)
        return diag @ self.class_prior


def _summing_matrix(rows: np.ndarray, n_rows: int, values: np.ndarray | None = None):
    """(n_rows, N) scipy.sparse CSR matrix S with S[rows[i], i] = values[i], so S @ X sums X's rows by
    group. scipy is imported here: the web process only needs the per-task E-step."""
    from scipy import sparse

    n = len(rows)
    data = np.ones(n) if values is None else values
    return sparse.csr_matrix((data, (rows, np.arange(n))), shape=(n_rows, n))


def _argmax_label(posterior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    label = posterior.argmax(axis=1)
    return label, posterior[np.arange(len(posterior)), label]


def gold_check(gold: dict[int, int] | None, *, n_tasks: int, n_classes: int) -> None:
    """Raises ValueError unless every gold entry is {task index in [0, n_tasks): class index in
    [0, n_classes)} (a label of -1 used to become the last class silently, by numpy indexing)."""
    for task, label in (gold or {}).items():
        if not (0 <= int(task) < n_tasks and 0 <= int(label) < n_classes):
            raise ValueError(
                f"gold entry {task}: {label} out of range (tasks [0, {n_tasks}), classes [0, {n_classes}))"
            )


def _clamp_gold(posterior: np.ndarray, gold: dict[int, int] | None) -> None:
    if gold:
        idx = np.fromiter(gold.keys(), dtype=np.int64, count=len(gold))
        lab = np.fromiter(gold.values(), dtype=np.int64, count=len(gold))
        posterior[idx] = 0.0
        posterior[idx, lab] = 1.0


def pooled_prior(n_classes: int) -> np.ndarray:
    """(K, K) float64: the Dirichlet pseudo-counts of the pooled confusion matrix (POOLED_PRIOR_*)."""
    off = POOLED_PRIOR_ANSWERS * (1 - POOLED_PRIOR_ACCURACY) / (n_classes - 1)
    prior = np.full((n_classes, n_classes), off)
    np.fill_diagonal(prior, POOLED_PRIOR_ANSWERS * POOLED_PRIOR_ACCURACY)
    return prior


def default_pooled(n_classes: int) -> np.ndarray:
    """(K, K) float64: the pooled confusion matrix of a campaign with no answers (the prior's mean)."""
    prior = pooled_prior(n_classes)
    return prior / prior.sum(axis=1, keepdims=True)


def majority_vote(answers: AnswerArrays, *, gold: dict[int, int] | None = None) -> Consensus:
    """Weighted majority vote: each task's posterior is its answers' weighted vote shares.

    Ties split the posterior evenly (two votes each for A and B: 0.5 and 0.5) and the label goes to
    the lowest class index. Tasks without answers get the uniform distribution and confidence 1/K.

    Args:
        answers: the answer set.
        gold: {task index: class index} of gold tasks, whose posterior is fixed one-hot.

    Returns:
        Consensus with confusion = pooled = the vote-vs-majority confusion of the whole crowd.

    Raises:
        ValueError: a gold entry is out of range (gold_check).
    """
    T, K = answers.n_tasks, answers.n_classes
    gold_check(gold, n_tasks=T, n_classes=K)
    votes = np.zeros((T, K))
    np.add.at(votes, (answers.task, answers.label), answers.weight)
    totals = votes.sum(axis=1, keepdims=True)
    posterior = np.divide(votes, totals, out=np.full((T, K), 1.0 / K), where=totals > 0)
    _clamp_gold(posterior, gold)
    label, confidence = _argmax_label(posterior)
    pooled_counts = pooled_prior(K)
    np.add.at(pooled_counts, (label[answers.task], answers.label), answers.weight)
    pooled = pooled_counts / pooled_counts.sum(axis=1, keepdims=True)
    class_prior = (np.bincount(label, minlength=K) + CLASS_PRIOR_COUNT) / (T + K * CLASS_PRIOR_COUNT)
    confusion = np.broadcast_to(pooled, (answers.n_workers, K, K)).copy()
    return Consensus(posterior, label, confidence, confusion, pooled, class_prior)


def log_posterior_unnormalised(
    answers: AnswerArrays, log_confusion: np.ndarray, log_class_prior: np.ndarray, vote_weight: np.ndarray
) -> np.ndarray:
    """(T, K) float64: log prior_k + sum over each task's answers of vote_weight * log confusion[w, k, l].

    The E-step of Dawid & Skene (1979), with each answer's log-likelihood scaled by its vote weight
    (a power likelihood: weight 0 ignores the answer, 1 counts it fully).
    """
    per_answer = log_confusion[answers.worker, :, answers.label]  # (N, K)
    summed = _summing_matrix(answers.task, answers.n_tasks, vote_weight) @ per_answer  # (T, K)
    return summed + log_class_prior


def _normalise_log(log_post: np.ndarray) -> tuple[np.ndarray, float]:
    top = log_post.max(axis=1, keepdims=True)
    unnorm = np.exp(log_post - top)
    total = unnorm.sum(axis=1, keepdims=True)
    log_marginal = float((np.log(total) + top).sum())
    return unnorm / total, log_marginal


def dawid_skene(
    answers: AnswerArrays,
    *,
    gold: dict[int, int] | None = None,
    worker_vote_weight: np.ndarray | None = None,
    one_coin: bool = False,
    coin_shrinkage_answers: float = COIN_SHRINKAGE_ANSWERS,
    max_iter: int = 100,
    tol: float = 1e-5,
) -> Consensus:
    """Dawid-Skene consensus by EM, with each annotator's confusion matrix shrunk towards their own
    one-coin matrix by an amount learned from their answers.

    The model of Dawid & Skene (1979): each task has a true class k drawn from the class prior, and
    annotator w answers l with probability confusion[w, k, l]. A full K x K matrix per person
    overfits people with few answers (Crowd-Kit's DawidSkene falls below majority vote on a sparse
    crowd in bench/consensus.py), and a one-coin model (one accuracy a_w, errors spread evenly)
    cannot see a person who calls every shirt a T-shirt. So, in each M-step:
      1. a_w = (correct_w + c * pooled accuracy) / (answers_w + c), c = `coin_shrinkage_answers`
         (a Beta prior towards the crowd's accuracy, as Toloka's skill q = (K + correct) / (2K + total));
      2. coin_w = a_w on the diagonal, (1 - a_w) / (K - 1) elsewhere;
      3. confusion_w[k] = (counts_w[k] + s_w * coin_w[k]) / (n_wk + s_w), with s_w chosen per person by
         empirical Bayes (`shrinkage_fit`): large when their errors look uniform, small when they
         have confusions of their own.
    This is the hierarchical prior of Bayesian classifier combination (Kim & Ghahramani 2012) with
    the prior's strength estimated per annotator instead of fixed.

    Also:
      - Gold tasks (semi-supervised EM): their posterior is one-hot on the known class at every
        step, so gold answers calibrate confusion matrices directly.
      - Answer weights scale both steps (weight 0 ignores an answer); `worker_vote_weight` tempers a
        person's votes in the E-step only (a power likelihood), their matrix still being estimated
        from all their answers.
      - one_coin=True stops after step 2 (the one-coin model; Karger, Oh & Shah 2011).
      - The pooled matrix of the crowd (all answers, with a diagonal-heavy Dirichlet prior) is kept
        for new annotators and for the router's priority.

    Initialised from weighted majority vote; stops when no posterior entry moves by more than `tol`
    in an iteration, or after `max_iter` iterations. Deterministic.

    Args:
        answers: the answer set (N answers).
        gold: {task index: class index}.
        worker_vote_weight: (W,) float64 in [0, 1], default all 1.
        one_coin: fit one accuracy per annotator instead of a full K x K matrix.
        coin_shrinkage_answers: pseudo answers pulling each accuracy towards the crowd's.
        max_iter: EM iteration cap.
        tol: the largest change of any posterior entry below which EM stops.

    Returns:
        Consensus. Tasks without answers carry the class prior.

    Raises:
        ValueError: worker_vote_weight has the wrong shape, a NaN or values outside [0, 1]; a gold
            entry is out of range (gold_check).
    """
    T, W, K = answers.n_tasks, answers.n_workers, answers.n_classes
    gold_check(gold, n_tasks=T, n_classes=K)
    if worker_vote_weight is None:
        worker_vote_weight = np.ones(W)
    worker_vote_weight = np.asarray(worker_vote_weight, dtype=np.float64)
    if (
        worker_vote_weight.shape != (W,)
        or not np.isfinite(worker_vote_weight).all()
        or worker_vote_weight.min(initial=0) < 0
        or worker_vote_weight.max(initial=0) > 1
    ):
        raise ValueError(f"worker_vote_weight must be ({W},) with values in [0, 1]")
    vote_weight = answers.weight * worker_vote_weight[answers.worker]

    posterior = majority_vote(answers, gold=gold).posterior
    # Tasks nobody answered take no part in the M-step (their posterior is the prior, not evidence).
    answered = np.bincount(answers.task, minlength=T) > 0
    prior_counts = pooled_prior(K)
    # Groups (worker, observed label): M-step counts are sums of task posteriors over each group.
    by_worker_label = _summing_matrix(answers.worker * K + answers.label, W * K, answers.weight)
    by_label = _summing_matrix(answers.label, K, answers.weight)
    uniform_errors = (1 - np.eye(K)) / (K - 1)

    n_iter = 0
    log_marginal = float("nan")
    while n_iter < max_iter:
        n_iter += 1
        # M-step.
        class_counts = posterior[answered].sum(axis=0) + CLASS_PRIOR_COUNT
        class_prior = class_counts / class_counts.sum()
        post_of_answer = posterior[answers.task]  # (N, K)
        pooled_counts = (by_label @ post_of_answer).T + prior_counts  # (K true, K observed)
        pooled = pooled_counts / pooled_counts.sum(axis=1, keepdims=True)
        counts = (by_worker_label @ post_of_answer).reshape(W, K, K).transpose(0, 2, 1)  # (W, true, observed)
        correct = np.trace(counts, axis1=1, axis2=2)
        total = counts.sum(axis=(1, 2))
        pooled_accuracy = float(np.diagonal(pooled) @ class_prior)
        accuracy = (correct + coin_shrinkage_answers * pooled_accuracy) / (total + coin_shrinkage_answers)
        coin = (1 - accuracy)[:, None, None] * uniform_errors[None] + accuracy[:, None, None] * np.eye(K)[None]
        if one_coin:
            confusion = coin
        else:
            strength = shrinkage_fit(counts, coin)[:, None, None]
            confusion = (counts + strength * coin) / (counts.sum(axis=2, keepdims=True) + strength)
        log_confusion = np.log(np.clip(confusion, 1e-12, None))
        # E-step.
        log_post = log_posterior_unnormalised(answers, log_confusion, np.log(class_prior), vote_weight)
        previous = posterior
        posterior, log_marginal = _normalise_log(log_post)
        _clamp_gold(posterior, gold)
        if np.abs(posterior - previous).max(initial=0.0) < tol:
            break
    label, confidence = _argmax_label(posterior)
    return Consensus(posterior, label, confidence, confusion, pooled, class_prior, n_iter, log_marginal)


SHRINKAGE_GRID = np.geomspace(0.5, 5000.0, 41)


def shrinkage_fit(counts: np.ndarray, centre: np.ndarray, grid: np.ndarray = SHRINKAGE_GRID) -> np.ndarray:
    """Each annotator's Dirichlet precision s_w (pseudo answers per confusion row): the value in
    `grid` that best explains their answer counts as draws around `centre`, by the Dirichlet-
    multinomial marginal likelihood sum_k log DirMult(counts[w, k] | s_w * centre[w, k]) (empirical
    Bayes; Minka 2000, "Estimating a Dirichlet distribution", with a grid search in place of the
    fixed-point update). Ties go to the largest s, and people with fewer than K answers get the
    largest s without being scored.

    Large s: the person errs uniformly around their one accuracy (one-coin); small s: they have
    confusions of their own worth a full matrix (a spammer who always picks one option, someone who
    calls every shirt a T-shirt).

    Args:
        counts: (W, K, K) float64, soft answer counts per annotator, true class and observed class.
        centre: (W, K, K) float64, rows summing to 1.
        grid: (G,) candidate values of s, ascending.

    Returns:
        (W,) float64.
    """
    from scipy.special import gammaln

    W, K, _ = counts.shape
    strength = np.full(W, float(grid[-1]))
    # Fewer than K answers (under one per row on average) cannot tell a personal confusion from
    # noise: those people keep the one-coin matrix (the largest s), and are not scored, which also
    # keeps crowds of thousands of occasional annotators fast.
    fit = np.flatnonzero(counts.sum(axis=(1, 2)) >= K)
    if not len(fit):
        return strength
    counts = counts[fit]
    centre = np.clip(np.broadcast_to(centre, (W, K, K))[fit], 1e-12, None)
    n = counts.sum(axis=2)  # (W_fit, K)
    scores = np.empty((len(grid), len(fit)))
    for i, s in enumerate(grid):
        alpha = s * centre
        per_row = gammaln(s) - gammaln(s + n) + (gammaln(counts + alpha) - gammaln(alpha)).sum(axis=2)
        scores[i] = per_row.sum(axis=1)
    # Reversed so that a flat likelihood (no evidence either way) picks the largest s.
    best = len(grid) - 1 - np.argmax(scores[::-1] >= scores.max(axis=0) - 1e-9, axis=0)
    strength[fit] = grid[best]
    return strength


def task_posterior(
    labels: np.ndarray,
    confusion_rows: np.ndarray,
    class_prior: np.ndarray,
    *,
    vote_weight: np.ndarray | None = None,
    gold_label: int | None = None,
) -> np.ndarray:
    """One task's posterior from its answers and the annotators' stored confusion matrices: the
    E-step of `dawid_skene` for a single task, used for the incremental update after each answer.

    Args:
        labels: (n,) int64, the class index of each of the task's answers.
        confusion_rows: (n, K, K) float64, the answering annotator's confusion matrix per answer.
        class_prior: (K,) float64.
        vote_weight: (n,) float64 in [0, 1], answer weight times annotator tempering; default 1.
        gold_label: the known class of a gold task (the posterior is then one-hot).

    Returns:
        (K,) float64 summing to 1.
    """
    K = len(class_prior)
    if gold_label is not None:
        out = np.zeros(K)
        out[gold_label] = 1.0
        return out
    labels = np.asarray(labels, dtype=np.int64)
    weights = np.ones(len(labels)) if vote_weight is None else np.asarray(vote_weight, dtype=np.float64)
    log_post = np.log(np.clip(class_prior, 1e-12, None)).copy()
    if len(labels):
        per_answer = np.log(np.clip(confusion_rows[np.arange(len(labels)), :, labels], 1e-12, None))  # (n, K)
        log_post += weights @ per_answer
    log_post -= log_post.max()
    post = np.exp(log_post)
    return post / post.sum()


def settle_probability(posterior: np.ndarray, confusion: np.ndarray, target: float) -> np.ndarray:
    """Probability that one more answer by a typical annotator lifts a task's confidence to `target`.

    P = sum_l p(l) * [max_k posterior'_k(l) >= target], with p(l) = sum_k posterior_k * confusion[k, l]
    the chance of answer l and posterior'(l) proportional to posterior_k * confusion[k, l] the
    posterior after it: a one-step lookahead on dynamic overlap's stopping rule (in the spirit of
    Sheng, Provost & Ipeirotis 2008, "Get another label?", which picks items by their label
    uncertainty). The router serves the highest first, so tasks one answer from settling are
    finished before fresh ones are started, and settled labels arrive early.

    Args:
        posterior: (T, K) or (K,) float64.
        confusion: (K, K) float64, the crowd's pooled confusion matrix.
        target: the confidence in [0, 1] at which a task settles.

    Returns:
        (T,) float64 in [0, 1] (a float for one task).
    """
    post = np.atleast_2d(posterior)
    joint = post[:, :, None] * confusion[None]  # (T, true k, observed l)
    answer_p = joint.sum(axis=1)  # (T, l)
    best = joint.max(axis=1)  # (T, l): unnormalised max of the posterior after answer l
    settles = best >= target * np.maximum(answer_p, 1e-300)
    probability = np.clip((answer_p * settles).sum(axis=1), 0.0, 1.0)
    return probability if np.ndim(posterior) == 2 else float(probability[0])
