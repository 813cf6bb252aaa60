"""The consensus maths (annotate.consensus.em) on small hand-computed cases."""

import numpy as np
import pytest

from annotate.consensus import em


def _answers(rows, *, n_tasks, n_workers, n_classes=2, weight=None):
    task, worker, label = (np.array(col) for col in zip(*rows, strict=True))
    return em.AnswerArrays.build(
        task, worker, label, n_tasks=n_tasks, n_workers=n_workers, n_classes=n_classes, weight=weight
    )


def _coin(accuracy: float, n_classes: int = 2) -> np.ndarray:
    off = (1 - accuracy) / (n_classes - 1)
    matrix = np.full((n_classes, n_classes), off)
    np.fill_diagonal(matrix, accuracy)
    return matrix


class TestMajorityVote:
    def test_weighted_vote_shares(self):
        # Task 0: two votes for class 1, one for class 0 -> 2/3; task 1: one vote for class 0.
        answers = _answers([(0, 0, 1), (0, 1, 1), (0, 2, 0), (1, 0, 0)], n_tasks=2, n_workers=3)
        result = em.majority_vote(answers)
        np.testing.assert_allclose(result.posterior, [[1 / 3, 2 / 3], [1.0, 0.0]])
        assert result.label.tolist() == [1, 0]
        np.testing.assert_allclose(result.confidence, [2 / 3, 1.0])

    def test_a_tie_splits_the_posterior_and_goes_to_the_lowest_class(self):
        answers = _answers([(0, 0, 1), (0, 1, 0)], n_tasks=1, n_workers=2)
        result = em.majority_vote(answers)
        np.testing.assert_allclose(result.posterior[0], [0.5, 0.5])
        assert result.label[0] == 0 and result.confidence[0] == pytest.approx(0.5)

    def test_zero_weight_answers_do_not_count(self):
        answers = _answers([(0, 0, 1), (0, 1, 0), (0, 2, 0)], n_tasks=1, n_workers=3, weight=[1.0, 0.0, 0.0])
        assert em.majority_vote(answers).label[0] == 1

    def test_tasks_without_answers_get_the_uniform_distribution(self):
        answers = _answers([(0, 0, 1)], n_tasks=2, n_workers=1, n_classes=4)
        np.testing.assert_allclose(em.majority_vote(answers).posterior[1], [0.25] * 4)

    def test_gold_is_clamped(self):
        answers = _answers([(0, 0, 1), (0, 1, 1)], n_tasks=1, n_workers=2)
        result = em.majority_vote(answers, gold={0: 0})
        np.testing.assert_allclose(result.posterior[0], [1.0, 0.0])


class TestTaskPosterior:
    """The per-task E-step: posterior_k proportional to prior_k * prod_i confusion_i[k, l_i]."""

    def test_a_reliable_annotator_outvotes_two_unreliable_ones(self):
        # Reliable (0.95) says class 0; two coin-flippers (0.55) say class 1. Uniform prior:
        # P(0) ∝ 0.95 * 0.45 * 0.45 = 0.192375, P(1) ∝ 0.05 * 0.55 * 0.55 = 0.015125.
        rows = np.stack([_coin(0.95), _coin(0.55), _coin(0.55)])
        posterior = em.task_posterior(np.array([0, 1, 1]), rows, np.array([0.5, 0.5]))
        expected = 0.192375 / (0.192375 + 0.015125)
        assert posterior[0] == pytest.approx(expected)
        assert posterior.argmax() == 0

    def test_equal_annotators_disagreeing_is_a_tie_at_the_prior(self):
        rows = np.stack([_coin(0.8), _coin(0.8)])
        posterior = em.task_posterior(np.array([0, 1]), rows, np.array([0.5, 0.5]))
        np.testing.assert_allclose(posterior, [0.5, 0.5])
        # With a non-uniform prior, the tie is broken by the prior.
        posterior = em.task_posterior(np.array([0, 1]), rows, np.array([0.3, 0.7]))
        np.testing.assert_allclose(posterior, [0.3, 0.7])

    def test_a_single_answer(self):
        # One answer of class 1 by a 0.9 annotator, 3 classes, uniform prior: errors spread evenly,
        # so P(1) = 0.9 / (0.9 + 0.05 + 0.05) = 0.9.
        posterior = em.task_posterior(np.array([1]), _coin(0.9, 3)[None], np.full(3, 1 / 3))
        np.testing.assert_allclose(posterior, [0.05, 0.9, 0.05])

    def test_an_annotator_with_no_history_uses_the_pooled_matrix(self):
        # The services pass the pooled matrix for a new person; with the default pooled matrix of a
        # campaign without answers (accuracy 0.7, K = 2) one answer gives 0.7.
        pooled = em.default_pooled(2)
        np.testing.assert_allclose(pooled, [[0.7, 0.3], [0.3, 0.7]])
        posterior = em.task_posterior(np.array([1]), pooled[None], np.array([0.5, 0.5]))
        np.testing.assert_allclose(posterior, [0.3, 0.7])

    def test_vote_weight_tempers_the_likelihood(self):
        # Weight 0.5 on a 0.9 answer: P(1) ∝ 0.9^0.5, P(0) ∝ 0.1^0.5 -> 0.75.
        posterior = em.task_posterior(np.array([1]), _coin(0.9)[None], np.array([0.5, 0.5]), vote_weight=[0.5])
        assert posterior[1] == pytest.approx(3 / 4)
        # Weight 0: no evidence, the prior.
        posterior = em.task_posterior(np.array([1]), _coin(0.9)[None], np.array([0.5, 0.5]), vote_weight=[0.0])
        np.testing.assert_allclose(posterior, [0.5, 0.5])

    def test_no_answers_give_the_prior_and_gold_gives_one_hot(self):
        prior = np.array([0.2, 0.8])
        np.testing.assert_allclose(em.task_posterior(np.array([], dtype=int), np.zeros((0, 2, 2)), prior), prior)
        gold = em.task_posterior(np.array([1]), _coin(0.9)[None], prior, gold_label=0)
        np.testing.assert_allclose(gold, [1.0, 0.0])


class TestDawidSkene:
    def _crowd(self, rng, *, n_tasks=300, accuracies=(0.95, 0.9, 0.9, 0.55, 0.5), n_classes=3, per_task=3):
        truth = rng.integers(0, n_classes, n_tasks)
        rows = []
        for t in range(n_tasks):
            for w in rng.choice(len(accuracies), per_task, replace=False):
                right = rng.random() < accuracies[w]
                label = truth[t] if right else (truth[t] + rng.integers(1, n_classes)) % n_classes
                rows.append((t, w, label))
        return truth, _answers(rows, n_tasks=n_tasks, n_workers=len(accuracies), n_classes=n_classes)

    def test_learns_who_is_reliable_and_beats_majority_vote(self):
        truth, answers = self._crowd(np.random.default_rng(7))
        result = em.dawid_skene(answers)
        reliability = result.reliability()
        assert reliability[0] > reliability[3] and reliability[1] > reliability[4]
        assert reliability[0] == pytest.approx(0.95, abs=0.06)
        assert (result.label == truth).mean() > (em.majority_vote(answers).label == truth).mean()
        np.testing.assert_allclose(result.posterior.sum(axis=1), 1.0)
        assert ((result.posterior >= 0) & (result.posterior <= 1)).all()

    def test_is_deterministic(self):
        _, answers = self._crowd(np.random.default_rng(3))
        first, second = em.dawid_skene(answers), em.dawid_skene(answers)
        np.testing.assert_array_equal(first.posterior, second.posterior)

    def test_gold_tasks_stay_at_their_known_label_and_expose_a_spammer(self):
        # Worker 1 always answers class 0; gold tasks 0..9 are all class 1.
        rows = [(t, 0, 1) for t in range(10)] + [(t, 1, 0) for t in range(10)]
        rows += [(t, 0, 1) for t in range(10, 20)] + [(t, 1, 0) for t in range(10, 20)]
        answers = _answers(rows, n_tasks=20, n_workers=2)
        result = em.dawid_skene(answers, gold={t: 1 for t in range(10)})
        assert result.label[:10].tolist() == [1] * 10
        # On the other tasks the two disagree; the gold-calibrated worker 0 wins.
        assert result.label[10:].tolist() == [1] * 10
        assert result.reliability()[0] > result.reliability()[1]

    def test_one_coin_gives_symmetric_matrices(self):
        _, answers = self._crowd(np.random.default_rng(5))
        result = em.dawid_skene(answers, one_coin=True)
        off = result.confusion[0][~np.eye(3, dtype=bool)]
        np.testing.assert_allclose(off, off[0])

    def test_a_down_weighted_annotator_counts_less(self):
        # Three annotators; on task 0, worker 2 alone says class 1 against worker 0 saying class 0.
        rows = [(0, 0, 0), (0, 2, 1)] + [(t, w, 0) for t in range(1, 30) for w in (0, 1, 2)]
        answers = _answers(rows, n_tasks=30, n_workers=3)
        full = em.dawid_skene(answers)
        tempered = em.dawid_skene(answers, worker_vote_weight=np.array([1.0, 1.0, 0.1]))
        assert tempered.posterior[0, 0] > full.posterior[0, 0]

    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match="label index out of range"):
            _answers([(0, 0, 2)], n_tasks=1, n_workers=1, n_classes=2)
        with pytest.raises(ValueError, match="weights must lie"):
            _answers([(0, 0, 1)], n_tasks=1, n_workers=1, weight=[1.5])
        answers = _answers([(0, 0, 1)], n_tasks=1, n_workers=1)
        with pytest.raises(ValueError, match="worker_vote_weight"):
            em.dawid_skene(answers, worker_vote_weight=np.array([2.0]))


class TestShrinkageAndGain:
    def test_shrinkage_is_large_for_uniform_errors_and_small_for_a_personal_confusion(self):
        coin = np.broadcast_to(_coin(0.8, 3), (2, 3, 3))
        # Worker 0's counts follow the coin exactly; worker 1 always calls class 0 class 1.
        counts = np.stack([_coin(0.8, 3) * 50, np.array([[0, 50, 0], [0, 50, 0], [0, 0, 50.0]])])
        strength = em.shrinkage_fit(counts, coin)
        assert strength[0] == em.SHRINKAGE_GRID[-1]
        assert strength[1] < 5

    def test_a_handful_of_right_answers_is_not_evidence_of_a_personal_matrix(self):
        # Two right answers in each of 3 rows, around a 0.8 one-coin. Per row, the Dirichlet-
        # multinomial gives them 0.8^2 = 0.64 at s -> infinity and (0.4 * 1.4) / (0.5 * 1.5) = 0.7467
        # at s = 0.5 (alpha = 0.5 * centre): a small s "wins" by 3 * log(0.7467 / 0.64) = 0.462 nats,
        # which is noise, not a confusion of one's own.
        coin = _coin(0.8, 3)[None]
        counts = (np.eye(3) * 2.0)[None]
        assert em.shrinkage_fit(counts, coin, evidence_nats=0.45)[0] == em.SHRINKAGE_GRID[0]
        assert em.shrinkage_fit(counts, coin, evidence_nats=0.47)[0] == em.SHRINKAGE_GRID[-1]
        assert em.shrinkage_fit(counts, coin)[0] == em.SHRINKAGE_GRID[-1]

    def test_settle_probability_by_hand(self):
        # Posterior (0.7, 0.3), a 0.9 annotator, target 0.95. Answer 0 comes with p = 0.7*0.9 + 0.3*0.1
        # = 0.66 and gives 0.63 / 0.66 = 0.9545 >= 0.95; answer 1 gives 0.27 / 0.34 = 0.794. P = 0.66.
        assert em.settle_probability(np.array([0.7, 0.3]), _coin(0.9), 0.95) == pytest.approx(0.66)
        # A fresh task (0.5, 0.5): one answer reaches 0.9, under 0.95 -> 0; with target 0.9 -> 1.
        assert em.settle_probability(np.array([0.5, 0.5]), _coin(0.9), 0.95) == pytest.approx(0.0)
        assert em.settle_probability(np.array([0.5, 0.5]), _coin(0.9), 0.9) == pytest.approx(1.0)
        # Rows of a batch are independent.
        both = em.settle_probability(np.array([[0.7, 0.3], [0.5, 0.5]]), _coin(0.9), 0.95)
        np.testing.assert_allclose(both, [0.66, 0.0])


# -- bad inputs (issue 15, item 4) ---------------------------------------------------------------------


def _two_tasks():
    return em.AnswerArrays.build([0, 0, 1], [0, 1, 0], [0, 0, 1], n_tasks=2, n_workers=2, n_classes=3)


def test_a_nan_vote_weight_is_refused_not_an_all_nan_posterior():
    with pytest.raises(ValueError, match="worker_vote_weight"):
        em.dawid_skene(_two_tasks(), worker_vote_weight=np.array([1.0, np.nan]))


@pytest.mark.parametrize("gold", [{0: -1}, {0: 3}, {2: 0}, {-1: 0}])
def test_a_gold_entry_out_of_range_is_refused(gold):
    # {0: -1} used to become the last class by numpy indexing.
    with pytest.raises(ValueError, match="gold entry"):
        em.dawid_skene(_two_tasks(), gold=gold)
    with pytest.raises(ValueError, match="gold entry"):
        em.majority_vote(_two_tasks(), gold=gold)


# -- a posterior that knows how little it knows; convergence (issue 15, items 1 and 2) ----------------


class TestOneAnswer:
    def test_one_answer_from_an_unknown_person_is_the_population_prior_not_certainty(self):
        # 50 tasks, each answered once by the same person, no gold: nothing can tell whether they are
        # careful. Their accuracy's posterior stays the population prior Beta(2.8, 1.2) (pseudo
        # annotators of accuracy 0.7 with 4 answers) and the E-step weighs an answer by
        # exp E[log a] = exp(psi(2.8) - psi(4)) against exp E[log(1 - a)] = exp(psi(1.2) - psi(4)):
        # P(their class) = 1 / (1 + exp(psi(1.2) - psi(2.8))) = 1 / (1 + exp(-0.289040 - 0.840547)) = 0.755763.
        # (The EM this replaced fed each answer back as its own proof: 0.998.)
        answers = _answers([(t, 0, t % 2) for t in range(50)], n_tasks=50, n_workers=1)
        result = em.dawid_skene(answers)
        np.testing.assert_allclose(result.confidence, 0.755763, atol=1e-6)
        np.testing.assert_allclose(result.class_prior, [0.5, 0.5])
        assert result.label.tolist() == [t % 2 for t in range(50)]
        assert result.trace.hyper == pytest.approx((2.8, 1.2))

    def test_lone_answers_do_not_vouch_for_their_author_gold_does(self):
        # Worker 0 answers 40 tasks alone; on 10 gold tasks (half of each class) they are right 6 times.
        rows = [(t, 0, t % 2) for t in range(40)] + [(40 + g, 0, g % 2 if g < 6 else 1 - g % 2) for g in range(10)]
        answers = _answers(rows, n_tasks=50, n_workers=1)
        result = em.dawid_skene(answers, gold={40 + g: g % 2 for g in range(10)})
        # Their accuracy comes from 6 of 10 gold answers, shrunk towards the prior: about 0.6, never ~1.
        assert 0.55 < result.reliability()[0] < 0.7
        assert result.confidence[:40].max() < 0.7

    def test_informing_tasks_are_gold_and_tasks_with_two_counted_answers(self):
        rows = [(0, 0, 1), (1, 0, 1), (1, 1, 1), (2, 0, 0), (2, 1, 0)]
        answers = _answers(rows, n_tasks=4, n_workers=2, weight=[1, 1, 1, 1, 0])
        # Task 2's second answer weighs 0 (too fast): one counted answer, like task 0.
        assert em.informing_tasks(answers, {3: 0}).tolist() == [False, True, False, True]


class TestConvergence:
    def _sparse(self, rng, *, n_tasks=400, n_classes=4, per_task=3):
        """Many people with 1..10 answers each (the sparse crowd where the old per-person shrinkage
        flipped between two values every iteration and EM ran to max_iter)."""
        people = []
        while sum(len(p) for p in people) < n_tasks * per_task:
            people.append([None] * int(rng.integers(1, 11)))
        accuracy = rng.uniform(0.55, 0.95, len(people))
        slots = [w for w, p in enumerate(people) for _ in p]
        rng.shuffle(slots)
        truth = rng.integers(0, n_classes, n_tasks)
        rows, seen = [], set()
        for i, w in enumerate(slots[: n_tasks * per_task]):
            t = i % n_tasks
            if (t, w) in seen:
                continue
            seen.add((t, w))
            right = rng.random() < accuracy[w]
            rows.append((t, w, truth[t] if right else (truth[t] + rng.integers(1, n_classes)) % n_classes))
        return truth, _answers(rows, n_tasks=n_tasks, n_workers=len(people), n_classes=n_classes)

    def test_the_sparse_crowd_converges_with_a_non_decreasing_objective(self):
        truth, answers = self._sparse(np.random.default_rng(11))
        result = em.dawid_skene(answers, gold={t: int(truth[t]) for t in range(20)})
        trace = result.trace
        assert trace.converged and result.n_iter < 60
        for r in set(trace.rounds):
            values = np.array([o for o, k in zip(trace.objective, trace.rounds, strict=True) if k == r])
            assert (np.diff(values) >= -1e-9 * abs(values[-1])).all()
        assert abs(trace.final_change) <= 1e-7 * abs(trace.objective[-1])
        assert (result.label == truth).mean() > (em.majority_vote(answers).label == truth).mean() - 0.01

    def test_the_objective_never_decreases_on_a_crowd_with_full_matrices(self):
        # A spammer who always answers class 0 next to careful people: round 1 gives them a full matrix.
        rng = np.random.default_rng(2)
        truth = rng.integers(0, 3, 200)
        rows = [(t, 0, 0) for t in range(200)]
        for t in range(200):
            for w in (1, 2):
                rows.append((t, w, truth[t] if rng.random() < 0.85 else (truth[t] + 1) % 3))
        answers = _answers(rows, n_tasks=200, n_workers=3, n_classes=3)
        result = em.dawid_skene(answers)
        trace = result.trace
        assert 1 in trace.rounds and trace.converged
        for r in set(trace.rounds):
            values = np.array([o for o, k in zip(trace.objective, trace.rounds, strict=True) if k == r])
            assert (np.diff(values) >= -1e-9 * abs(values[-1])).all()
        # The spammer's answer says nothing: the careful two decide (0.72 both right, plus half of the
        # 0.255 where they disagree, at best).
        assert (result.label == truth).mean() > 0.8
        np.testing.assert_allclose(result.confusion[0][:, 0], 1.0, atol=0.05)

    def test_beta_hyper_fit_finds_the_population_and_never_lowers_its_score(self):
        # 400 people with 100 answers each, accuracies from Beta(16, 4) (mean 0.8, strength 20).
        rng = np.random.default_rng(4)
        total = np.full(400, 100.0)
        correct = rng.binomial(100, rng.beta(16, 4, 400)).astype(float)
        a, b = em.beta_hyper_fit(correct, total, start=(2.8, 1.2))
        assert a / (a + b) == pytest.approx(0.8, abs=0.02)
        assert 12 < a + b < 35
        # Started at the optimum, it stays there.
        assert em.beta_hyper_fit(correct, total, start=(a, b)) == pytest.approx((a, b), rel=1e-3)

    def test_the_population_never_outweighs_twenty_answers_of_ones_own(self):
        # Everybody right 80% of the time: the beta-binomial's best strength is unbounded (no spread
        # at all); it is capped at HYPER_STRENGTH_RANGE[1] = 20 pseudo answers, with the mean that
        # is best at that strength (the fixed-strength fit's; about 0.785, not 0.8: at strength 20 the
        # beta-binomial of 80/100 peaks a little lower).
        correct, total = np.full(400, 80.0), np.full(400, 100.0)
        a, b = em.beta_hyper_fit(correct, total, start=(2.8, 1.2))
        assert a + b == pytest.approx(em.HYPER_STRENGTH_RANGE[1]) == pytest.approx(20.0)
        assert (a, b) == pytest.approx(em.beta_hyper_fit(correct, total, start=(2.8, 1.2), fixed_strength=20.0))
        assert a / (a + b) == pytest.approx(0.8, abs=0.03)
