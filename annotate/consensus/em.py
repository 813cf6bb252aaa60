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

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Prior on the pooled confusion matrix: each true-class row starts as POOLED_PRIOR_ANSWERS pseudo
# answers, POOLED_PRIOR_ACCURACY of them correct. Keeps classes from swapping names in EM (label
# switching) and gives a campaign with no answers yet a sane starting point.
POOLED_PRIOR_ACCURACY = 0.7
POOLED_PRIOR_ANSWERS = 4.0
# Each annotator's accuracy is pulled towards the crowd's with this many pseudo answers.
COIN_SHRINKAGE_ANSWERS = 2.0
# Full-matrix rounds after the one-coin round 0 (dawid_skene, step 3). A second one recovers class
# confusers' accuracy at 3 answers (0.8808 -> 0.8826, bench/consensus.py --parts accuracy); a
# third changes nothing measurable.
FULL_MATRIX_ROUNDS = 2
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
class FitTrace:
    """How a `dawid_skene` fit went.

    Attributes:
        objective: the objective after each iteration, in nats: the evidence lower bound (ELBO) of
            the answers that identify reliability (module docstring), plus the log priors of the
            point-estimated parameters. Non-decreasing within a round.
        rounds: the round (0: everyone one-coin; 1, 2, ...: people with confusions of their own get
            a full matrix, chosen again each round) of each iteration, parallel to `objective`.
        converged: whether the last round stopped on `tol` rather than on `max_iter`.
        hyper: (alpha, beta) of the learned Beta prior over annotators' accuracies.
    """

    objective: list[float]
    rounds: list[int]
    converged: bool
    hyper: tuple[float, float]

    @property
    def final_change(self) -> float:
        """The objective's change over the last iteration of the last round (nats; nan if it ran one)."""
        last = [o for o, r in zip(self.objective, self.rounds, strict=True) if r == self.rounds[-1]]
        return float(last[-1] - last[-2]) if len(last) >= 2 else float("nan")


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
        n_iter: iterations run, all rounds together (0 for majority vote).
        log_likelihood: log marginal likelihood of the answers under the final parameters (the
            reported, tempered posterior's normaliser).
        trace: how the `dawid_skene` fit went (objective per iteration, convergence); None for
            majority vote.
    """

    posterior: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    confusion: np.ndarray
    pooled: np.ndarray
    class_prior: np.ndarray
    n_iter: int = 0
    log_likelihood: float = float("nan")
    trace: FitTrace | None = None

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


# Hyperprior of the population of one-coin accuracies: HYPER_PRIOR_ANNOTATORS pseudo annotators whose
# accuracy is Beta(POOLED_PRIOR_ACCURACY * POOLED_PRIOR_ANSWERS, (1 - ...) * POOLED_PRIOR_ANSWERS). It keeps
# the learned Beta proper with one annotator and is outweighed by a crowd of a few dozen.
HYPER_PRIOR_ANNOTATORS = 2.0
# Bounds of the learned Beta's strength (pseudo answers of the population prior on each accuracy).
# The upper bound: never trust the crowd's mean more than 20 answers of a person's own. With a few
# answers per person, type-II maximum likelihood on soft counts (themselves pulled towards the
# consensus) finds people more alike than they are: 49 pseudo answers on the sparse crowd of
# bench/consensus.py, whose accuracies span 0.55-0.95. Capped at 20, its accuracy at 3 answers goes
# 0.8966 -> 0.8982, calibration unchanged (reliable staff learn 19).
HYPER_STRENGTH_RANGE = (0.5, 20.0)


def _beta_kl(a1, b1, a0, b0):
    """KL(Beta(a1, b1) || Beta(a0, b0)), elementwise."""
    from scipy.special import betaln, digamma

    return (
        betaln(a0, b0)
        - betaln(a1, b1)
        + (a1 - a0) * digamma(a1)
        + (b1 - b0) * digamma(b1)
        + (a0 - a1 + b0 - b1) * digamma(a1 + b1)
    )


def _hyper_prior_stats() -> tuple[float, float]:
    from scipy.special import digamma

    a = POOLED_PRIOR_ACCURACY * POOLED_PRIOR_ANSWERS
    b = POOLED_PRIOR_ANSWERS - a
    return float(digamma(a) - digamma(a + b)), float(digamma(b) - digamma(a + b))


def beta_hyper_fit(
    correct: np.ndarray, total: np.ndarray, *, start: tuple[float, float], fixed_strength: float | None = None
) -> tuple[float, float]:
    """The Beta(alpha, beta) population prior over annotators' accuracies that best explains their
    (soft) counts of right and wrong answers: type-II maximum likelihood of the beta-binomial,
    sum_w log B(alpha + correct_w, beta + wrong_w) - log B(alpha, beta) (the accuracies integrated
    out; Minka 2000, "Estimating a Dirichlet distribution"), plus HYPER_PRIOR_ANNOTATORS pseudo
    annotators distributed as Beta(POOLED_PRIOR_ACCURACY * POOLED_PRIOR_ANSWERS, ...), which keep it
    proper when there are few annotators. Fitted by L-BFGS-B from `start` in (log alpha, log beta); the
    result is kept only if it scores at least as well as `start`, so a fit never lowers the objective.

    Args:
        correct, total: (W,) float64 >= 0, each annotator's expected right answers and answers.
        start: the current (alpha, beta).
        fixed_strength: keep alpha + beta at this value and fit only the mean.

    Returns:
        (alpha, beta), alpha + beta within HYPER_STRENGTH_RANGE.
    """
    from scipy.optimize import minimize, minimize_scalar
    from scipy.special import betaln

    m0a, m0b = _hyper_prior_stats()
    wrong = np.maximum(total - correct, 0.0)
    n = len(correct)
    low, high = HYPER_STRENGTH_RANGE

    def score(a: float, b: float) -> float:
        data = float(np.sum(betaln(a + correct, b + wrong))) - n * float(betaln(a, b))
        return data + HYPER_PRIOR_ANNOTATORS * ((a - 1) * m0a + (b - 1) * m0b - float(betaln(a, b)))

    a0, b0 = start
    if fixed_strength is not None:
        a0, b0 = fixed_strength * a0 / (a0 + b0), fixed_strength * b0 / (a0 + b0)
    best = (a0, b0)
    best_score = score(a0, b0)
    def mean_fit(strength: float) -> tuple[float, float]:
        found = minimize_scalar(
            lambda x: -score(strength / (1 + np.exp(-x)), strength / (1 + np.exp(x))),
            bounds=(-12.0, 12.0),
            method="bounded",
        )
        return strength / (1 + np.exp(-found.x)), strength / (1 + np.exp(found.x))

    if fixed_strength is not None:
        candidate = mean_fit(fixed_strength)
    else:

        def objective(u):
            return -score(float(np.exp(u[0])), float(np.exp(u[1])))

        found = minimize(
            objective,
            np.log([a0, b0]),
            method="L-BFGS-B",
            bounds=[(np.log(low / 2) - 8, np.log(high)), (np.log(low / 2) - 8, np.log(high))],
        )
        candidate = (float(np.exp(found.x[0])), float(np.exp(found.x[1])))
        strength = sum(candidate)
        if not low <= strength <= high:  # the best mean at the nearest bound of the strength
            candidate = mean_fit(min(max(strength, low), high))
    if score(*candidate) >= best_score:
        best = candidate
    return float(best[0]), float(best[1])


def _coin_log_likelihood(
    answers: AnswerArrays,
    e_log_a: np.ndarray,
    e_log_err: np.ndarray,
    full_log: np.ndarray | None,
    full_index: np.ndarray,
) -> np.ndarray:
    """(N, K) float64: the log-likelihood term of each answer under each true class.

    One-coin annotators: E_q[log a_w] where the class is the answer, E_q[log((1 - a_w) / (K - 1))]
    elsewhere. Annotators with a full matrix (full_index[w] >= 0): log confusion[full_index[w], k, l].
    """
    w, lab = answers.worker, answers.label
    per_answer = np.repeat(e_log_err[w][:, None], answers.n_classes, axis=1)
    per_answer[np.arange(len(w)), lab] = e_log_a[w]
    if full_log is not None and len(full_log):
        rows = np.flatnonzero(full_index[w] >= 0)
        per_answer[rows] = full_log[full_index[w[rows]], :, lab[rows]]
    return per_answer


def informing_tasks(answers: AnswerArrays, gold: dict[int, int] | None) -> np.ndarray:
    """(T,) bool: the tasks whose answers can tell anything about annotators' reliability: gold tasks,
    and tasks with at least two answers of weight > 0. A task's lone answer agrees with the
    consensus it alone makes; counting it as evidence is what made one answer look certain."""
    counted = np.bincount(answers.task, weights=(answers.weight > 0).astype(float), minlength=answers.n_tasks)
    informs = counted >= 2
    if gold:
        informs[np.fromiter(gold.keys(), dtype=np.int64, count=len(gold))] = True
    return informs


def dawid_skene(
    answers: AnswerArrays,
    *,
    gold: dict[int, int] | None = None,
    worker_vote_weight: np.ndarray | None = None,
    one_coin: bool = False,
    coin_shrinkage_answers: float | None = None,
    max_iter: int = 100,
    tol: float = 1e-7,
) -> Consensus:
    """Dawid-Skene consensus by variational Bayes, with a learned hierarchical prior over annotators'
    accuracies, a full confusion matrix only for people whose answers show one, and reliability
    learned only from answers that can reveal it.

    The model of Dawid & Skene (1979): task t has a true class z_t ~ Categorical(class prior), and
    annotator w answers l with probability confusion[w, z_t, l]. Fitted as follows.
      1. Evidence. Only gold tasks and tasks with two or more answers of weight > 0 (`informing_tasks`)
         inform the parameters. Every task gets a posterior, but a lone answer is judged with what
         the other answers say about its author, never with itself: with one answer per task the
         likelihood cannot tell a careful person from a careless one (it is flat along a ridge), and
         EM fed its own output back (0.998 mean confidence at 0.859 accuracy, issue 15).
      2. One-coin annotators (everyone in round 0): accuracy a_w ~ Beta(alpha, beta), errors spread
         evenly over the other K - 1 classes (Karger, Oh & Shah 2011). Variational Bayes keeps the
         whole posterior q(a_w) = Beta(alpha + correct_w, beta + wrong_w) and the E-step uses
         E[log a_w] = psi(alpha + correct_w) - psi(alpha + beta + n_w) (psi the digamma function), so a
         person with few checked answers weighs little and one with none weighs as the population.
         (alpha, beta) is the population of accuracies, learned by type-II maximum likelihood
         (`beta_hyper_fit`); this is the hierarchical prior of Bayesian classifier combination
         (Kim & Ghahramani 2012, "Bayesian classifier combination", AISTATS), for the one-coin model.
      3. Rounds 1 (unless one_coin; FULL_MATRIX_ROUNDS of them): each person's Dirichlet precision
         towards their own one-coin matrix is chosen by empirical Bayes (`shrinkage_fit` on the
         previous round's soft counts); people whose errors are clearly not uniform (a spammer who
         always picks one option, someone who calls every shirt a T-shirt) get a full matrix,
         confusion_w[k] = (counts_w[k] + s_w coin_w[k]) / (n_wk + s_w) (a MAP estimate), the others
         stay one-coin. Then the same iteration runs to convergence again. The second round chooses
         again on the first's posterior, which no longer blames a confuser's answers on uniform noise.
      4. The class prior is a MAP estimate under a Dirichlet(1 + CLASS_PRIOR_COUNT) prior.
    Each iteration is coordinate ascent on one objective, the evidence lower bound (Bishop 2006,
    "Pattern recognition and machine learning", ch. 10) of the informing answers plus the log priors
    of the point estimates, so it never decreases within a round (FitTrace). A round stops when the
    objective's change is at most tol * |objective|, or after max_iter iterations.

    Also:
      - Gold tasks (semi-supervised): their posterior is one-hot on the known class at every step.
      - Answer weights scale the likelihood (weight 0 ignores an answer, too fast say).
        `worker_vote_weight` tempers a person's votes in the reported posterior only (a power
        likelihood): their reliability is learned from all their answers, untempered.
      - The pooled matrix of the crowd (informing answers, with a diagonal-heavy Dirichlet prior) is
        kept for new annotators and for the router's priority.
    Initialised from weighted majority vote. Deterministic. Cost per iteration O(N K) plus O(K^2) per
    full-matrix annotator; `shrinkage_fit` runs once per round (O(W K^2) per grid value), never per
    iteration.

    Args:
        answers: the answer set (N answers).
        gold: {task index: class index}.
        worker_vote_weight: (W,) float64 in [0, 1], default all 1.
        one_coin: fit one accuracy per annotator (round 0 only).
        coin_shrinkage_answers: fix the population prior's strength alpha + beta to this many pseudo
            answers instead of learning it (None, the default: learn it).
        max_iter: iteration cap per round.
        tol: relative change of the objective below which a round stops.

    Returns:
        Consensus: tasks without answers carry the class prior; `confusion` holds, for a one-coin
        annotator, the normalised matrix the E-step uses (exp E[log a_w] on the diagonal, the errors'
        counterpart elsewhere, rows scaled to sum to 1, which leaves every posterior unchanged);
        `trace` says how the fit went.

    Raises:
        ValueError: worker_vote_weight has the wrong shape, a NaN or values outside [0, 1]; a gold
            entry is out of range (gold_check).
    """
    from scipy.special import digamma

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

    informs = informing_tasks(answers, gold)
    gold_idx = np.fromiter((gold or {}).keys(), dtype=np.int64, count=len(gold or {}))
    gold_lab = np.fromiter((gold or {}).values(), dtype=np.int64, count=len(gold or {}))
    free_informing = informs.copy()
    free_informing[gold_idx] = False
    # The M-step sees informing answers only; the E-step gives every task a posterior.
    fit_weight = answers.weight * informs[answers.task]
    by_task = _summing_matrix(answers.task, T, answers.weight)
    by_worker = _summing_matrix(answers.worker, W, fit_weight)
    by_label = _summing_matrix(answers.label, K, fit_weight)
    prior_counts = pooled_prior(K)
    log_k1 = np.log(K - 1)

    posterior = majority_vote(answers, gold=gold).posterior
    hyper = (POOLED_PRIOR_ACCURACY * POOLED_PRIOR_ANSWERS, (1 - POOLED_PRIOR_ACCURACY) * POOLED_PRIOR_ANSWERS)
    if coin_shrinkage_answers is not None:
        hyper = (POOLED_PRIOR_ACCURACY * coin_shrinkage_answers, (1 - POOLED_PRIOR_ACCURACY) * coin_shrinkage_answers)
    full_index = np.full(W, -1, dtype=np.int64)  # row in the full matrices, or -1 (one-coin)
    full_workers = np.zeros(0, dtype=np.int64)
    full_strength = np.zeros(0)
    full_centre = np.zeros((0, K, K))
    full_log = None
    by_full = None
    objective, rounds = [], []
    n_iter, converged = 0, False
    e_log_a = e_log_err = log_prior = None  # set by round 0's first iteration (max_iter >= 1)

    for round_ in range(1 if one_coin else 1 + FULL_MATRIX_ROUNDS):
        if round_ >= 1:
            counts = _worker_counts(answers, posterior, fit_weight, W, K)
            accuracy = np.exp(e_log_a) / (np.exp(e_log_a) + np.exp(e_log_err) * (K - 1))
            coin = _coin_matrices(accuracy, K)
            strength = shrinkage_fit(counts, coin)
            chosen = np.flatnonzero(strength < SHRINKAGE_GRID[-1])
            if not len(chosen):
                break  # nobody needs a full matrix: the last round's model stands
            full_workers = chosen
            full_index[:] = -1
            full_index[full_workers] = np.arange(len(full_workers))
            full_strength = strength[full_workers]
            full_centre = coin[full_workers]
            keep = np.isin(answers.worker, full_workers)
            by_full = (
                _summing_matrix(
                    full_index[answers.worker[keep]] * K + answers.label[keep],
                    len(full_workers) * K,
                    fit_weight[keep],
                ),
                keep,
            )
        coin_workers = full_index < 0
        previous = None
        converged = False
        for _ in range(max_iter):
            n_iter += 1
            # Variational M-step: q(a_w), the population prior, the full matrices, the class prior.
            post_of_answer = posterior[answers.task]  # (N, K)
            correct = by_worker @ post_of_answer[np.arange(len(answers)), answers.label]
            total = np.asarray(by_worker.sum(axis=1)).ravel()
            # The population prior with the accuracies integrated out, then q(a_w) given it: together
            # the best (prior, q(a)) for this q(z), without zig-zagging between the two.
            hyper = beta_hyper_fit(
                correct[coin_workers], total[coin_workers], start=hyper, fixed_strength=coin_shrinkage_answers
            )
            a_post, b_post = hyper[0] + correct, hyper[1] + total - correct
            e_log_a = digamma(a_post) - digamma(a_post + b_post)
            e_log_b = digamma(b_post) - digamma(a_post + b_post)
            e_log_err = e_log_b - log_k1
            penalty = -float(_beta_kl(a_post, b_post, hyper[0], hyper[1])[coin_workers].sum())
            m0a, m0b = _hyper_prior_stats()
            from scipy.special import betaln

            penalty += HYPER_PRIOR_ANNOTATORS * float(
                (hyper[0] - 1) * m0a + (hyper[1] - 1) * m0b - betaln(hyper[0], hyper[1])
            )
            if by_full is not None:
                matrix, keep = by_full
                fc = (matrix @ post_of_answer[keep]).reshape(len(full_workers), K, K).transpose(0, 2, 1)
                pseudo = full_strength[:, None, None] * full_centre
                confusion_full = (fc + pseudo) / (fc.sum(axis=2, keepdims=True) + full_strength[:, None, None])
                full_log = np.log(np.clip(confusion_full, 1e-300, None))
                penalty += float((pseudo * full_log).sum())
            class_counts = posterior[informs].sum(axis=0) + CLASS_PRIOR_COUNT
            class_prior = class_counts / class_counts.sum()
            log_prior = np.log(class_prior)
            penalty += CLASS_PRIOR_COUNT * float(log_prior.sum())
            # E-step.
            per_answer = _coin_log_likelihood(answers, e_log_a, e_log_err, full_log, full_index)
            log_post = by_task @ per_answer + log_prior
            posterior, _ = _normalise_log(log_post)
            _clamp_gold(posterior, gold)
            top = log_post[free_informing].max(axis=1, keepdims=True) if free_informing.any() else np.zeros((0, 1))
            evidence = float((np.log(np.exp(log_post[free_informing] - top).sum(axis=1)) + top[:, 0]).sum())
            evidence += float(log_post[gold_idx, gold_lab].sum())
            value = evidence + penalty
            objective.append(value)
            rounds.append(round_)
            if previous is not None and abs(value - previous) <= tol * max(1.0, abs(value)):
                converged = True
                break
            previous = value

    # The reported posterior: tempered votes, gold clamped.
    per_answer = _coin_log_likelihood(answers, e_log_a, e_log_err, full_log, full_index)
    vote_weight = answers.weight * worker_vote_weight[answers.worker]
    log_post = _summing_matrix(answers.task, T, vote_weight) @ per_answer + log_prior
    posterior, log_marginal = _normalise_log(log_post)
    _clamp_gold(posterior, gold)
    label, confidence = _argmax_label(posterior)
    accuracy = np.exp(e_log_a) / (np.exp(e_log_a) + np.exp(e_log_err) * (K - 1))
    confusion = _coin_matrices(accuracy, K)
    if full_log is not None and len(full_workers):
        confusion[full_workers] = np.exp(full_log)
    pooled_counts = (by_label @ posterior[answers.task]).T + prior_counts
    pooled = pooled_counts / pooled_counts.sum(axis=1, keepdims=True)
    trace = FitTrace(objective, rounds, converged, (float(hyper[0]), float(hyper[1])))
    logger.debug(
        "dawid_skene: %d iterations, objective %.6g, last change %.3g, converged %s, hyper %s",
        n_iter,
        objective[-1] if objective else float("nan"),
        trace.final_change,
        converged,
        trace.hyper,
    )
    return Consensus(posterior, label, confidence, confusion, pooled, class_prior, n_iter, log_marginal, trace)


def _coin_matrices(accuracy: np.ndarray, K: int) -> np.ndarray:
    """(W, K, K) float64: one-coin matrices, accuracy on the diagonal, (1 - accuracy) / (K - 1) elsewhere."""
    off = ((1 - accuracy) / (K - 1))[:, None, None]
    return off * (1 - np.eye(K))[None] + accuracy[:, None, None] * np.eye(K)[None]


def _worker_counts(answers: AnswerArrays, posterior: np.ndarray, weight: np.ndarray, W: int, K: int) -> np.ndarray:
    """(W, K true, K observed) float64: soft answer counts per annotator under `posterior`."""
    matrix = _summing_matrix(answers.worker * K + answers.label, W * K, weight)
    return (matrix @ posterior[answers.task]).reshape(W, K, K).transpose(0, 2, 1)


SHRINKAGE_GRID = np.geomspace(0.5, 5000.0, 41)
# How much better (log marginal likelihood, nats) a smaller s must explain a person's answers than
# the largest, one-coin s before they get a full matrix: 3 nats is a Bayes factor of about 20
# ("strong" on Kass & Raftery's 1995 scale).
SHRINKAGE_EVIDENCE_NATS = 3.0


def shrinkage_fit(
    counts: np.ndarray,
    centre: np.ndarray,
    grid: np.ndarray = SHRINKAGE_GRID,
    *,
    evidence_nats: float = SHRINKAGE_EVIDENCE_NATS,
) -> np.ndarray:
    """Each annotator's Dirichlet precision s_w (pseudo answers per confusion row): the value in
    `grid` that best explains their answer counts as draws around `centre`, by the Dirichlet-
    multinomial marginal likelihood sum_k log DirMult(counts[w, k] | s_w * centre[w, k]) (empirical
    Bayes; Minka 2000, "Estimating a Dirichlet distribution", with a grid search in place of the
    fixed-point update). A smaller s is chosen only when it beats the largest by more than
    `evidence_nats` (a log Bayes factor; ties and weaker evidence keep the largest s), and people
    with fewer than K answers get the largest s without being scored.

    Large s: the person errs uniformly around their one accuracy (one-coin); small s: they have
    confusions of their own worth a full matrix (a spammer who always picks one option, someone who
    calls every shirt a T-shirt).

    Args:
        counts: (W, K, K) float64, soft answer counts per annotator, true class and observed class.
        centre: (W, K, K) float64, rows summing to 1.
        grid: (G,) candidate values of s, ascending.
        evidence_nats: the margin >= 0 in nats (SHRINKAGE_EVIDENCE_NATS).

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
    # A full matrix only on clear evidence. A few answers per row always look "clumpy" (two right
    # answers in one row fit a small s better than the one-coin), and a small s chosen on that noise
    # trusts each row's handful of answers: agreeing answers then look near-certain.
    clear = scores.max(axis=0) - scores[-1] > evidence_nats
    strength[fit] = np.where(clear, grid[best], grid[-1])
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
