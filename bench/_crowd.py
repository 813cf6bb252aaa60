"""Simulated crowds answering the Fashion-MNIST category question, for bench/consensus.py (and the
learning-loop bench after it).

Each regime is a population of simulated annotators with a way of answering a task whose true class
is a real Fashion-MNIST label. Nothing here knows about the database: answers are index arrays.

Classes (Fashion-MNIST order): 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal,
6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_CLASSES = 10
# Groups of look-alike classes: tops and outerwear, and shoes.
CONFUSABLE = ((0, 2, 4, 6), (5, 7, 9))
_GROUP_OF = {c: g for g in CONFUSABLE for c in g}


@dataclass
class Crowd:
    """A population of simulated annotators.

    Attributes:
        name: the regime's name.
        confusion: (W, K, K) float64, confusion[w, k, l] = P(w answers l | true k), for annotators whose
            answers do not depend on the item.
        workload: (W,) float64 summing to 1, the share of all answers each annotator gives.
        max_answers: (W,) int64, a cap on each annotator's answers (sparse crowds), or None.
        item_difficulty: (T,) float64 in (0, 1] per item, or None; with it, an answer is correct with
            probability sigmoid(ability_w / difficulty_t) (the GLAD model, Whitehill et al. 2009) and
            wrong answers are spread over the other classes.
        ability: (W,) float64, used with item_difficulty.
        description: one line for the report.
        gold_first: the campaign's gold_first_count for this crowd (None: AnswerStream's default).
    """

    name: str
    confusion: np.ndarray
    workload: np.ndarray
    description: str
    max_answers: np.ndarray | None = None
    item_difficulty: np.ndarray | None = None
    ability: np.ndarray | None = None
    is_spammer: np.ndarray = field(default=None)
    # The campaign's gold_first_count for this crowd, when not the default 5.
    gold_first: int | None = None

    @property
    def n_workers(self) -> int:
        return len(self.workload)

    def answer(self, worker: np.ndarray, truth: np.ndarray, item: np.ndarray, rng: np.random.Generator):
        """Draw one answer per (worker, true class, item index) triple. Returns (n,) int64 labels."""
        if self.item_difficulty is not None:
            logits = self.ability[worker] / self.item_difficulty[item]
            correct = rng.random(len(worker)) < 1 / (1 + np.exp(-logits))
            wrong = (truth + rng.integers(1, N_CLASSES, len(worker))) % N_CLASSES
            return np.where(correct, truth, wrong)
        rows = self.confusion[worker, truth]  # (n, K)
        cumulative = rows.cumsum(axis=1)
        draw = rng.random(len(worker))[:, None]
        return np.minimum((draw > cumulative).sum(axis=1), N_CLASSES - 1).astype(np.int64)


def _one_coin(accuracy: np.ndarray) -> np.ndarray:
    W = len(accuracy)
    conf = np.repeat(((1 - accuracy) / (N_CLASSES - 1))[:, None, None], N_CLASSES, axis=1)
    conf = np.repeat(conf, N_CLASSES, axis=2)
    idx = np.arange(N_CLASSES)
    conf[:, idx, idx] = accuracy[:, None]
    return conf.reshape(W, N_CLASSES, N_CLASSES)


def _zipf_workload(n: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(weights)
    return weights / weights.sum()


def crowd_reliable_staff(rng: np.random.Generator, n_workers: int = 40) -> Crowd:
    accuracy = rng.uniform(0.80, 0.97, n_workers)
    return Crowd(
        "reliable staff",
        _one_coin(accuracy),
        _zipf_workload(n_workers, rng),
        f"{n_workers} people, accuracy 0.80-0.97, workloads uneven (Zipf: the busiest gives ~23% of answers)",
    )


def crowd_spammers(rng: np.random.Generator, n_workers: int = 50, spam_share: float = 0.3) -> Crowd:
    n_spam = int(round(n_workers * spam_share))
    accuracy = rng.uniform(0.70, 0.95, n_workers)
    conf = _one_coin(accuracy)
    spammer = np.zeros(n_workers, dtype=bool)
    spammer[:n_spam] = True
    for w in range(n_spam):
        if w % 2 == 0:  # uniform random clicks
            conf[w] = 1.0 / N_CLASSES
        else:  # always the same option
            conf[w] = 0.0
            conf[w, :, rng.integers(N_CLASSES)] = 1.0
    order = rng.permutation(n_workers)
    return Crowd(
        "30% spammers",
        conf[order],
        np.full(n_workers, 1.0 / n_workers),
        f"{n_workers} people, {n_spam} spammers (half random, half always one option), others 0.70-0.95",
        is_spammer=spammer[order],
    )


def crowd_class_confusers(rng: np.random.Generator, n_workers: int = 40) -> Crowd:
    """People who mix up look-alike classes, each in their own way: shirt/T-shirt/pullover/coat and
    sneaker/sandal/ankle boot."""
    conf = np.zeros((n_workers, N_CLASSES, N_CLASSES))
    for w in range(n_workers):
        for k in range(N_CLASSES):
            base = 0.97
            conf[w, k, k] = base
            conf[w, k, [c for c in range(N_CLASSES) if c != k]] = (1 - base) / (N_CLASSES - 1)
            group = _GROUP_OF.get(k)
            if group is None:
                continue
            # This person calls k by another name in its group with a personal, skewed rate.
            mix = rng.uniform(0.15, 0.55)
            others = [c for c in group if c != k]
            share = rng.dirichlet(np.full(len(others), 0.5))
            conf[w, k] *= 1 - mix
            conf[w, k, others] += mix * share
    return Crowd(
        "class confusers",
        conf,
        _zipf_workload(n_workers, rng, exponent=0.5),
        f"{n_workers} people, 97% right on distinct classes; each confuses tops/coats and shoes "
        "(15-55% of those items) in a personal, lopsided way",
    )


def crowd_sparse(rng: np.random.Generator, n_items: int, answers_per_item: int = 5, cap: int = 10) -> Crowd:
    """Many people with 1..cap answers each. Their campaign checks each newcomer on 1 gold task, not
    5: with caps this low, 5 would take half of everyone's answers. The crowd is sized so that
    about `answers_per_item` answers per item are available (each person gives cap - 1 regular
    answers after their gold one, 4.6 on average), so dynamic overlap is not cut short by people
    running out."""
    gold_first = 1
    regular_per_person = np.mean([max(c - gold_first, 1) for c in range(1, cap + 1)])
    n_workers = int(np.ceil(n_items * answers_per_item * 1.2 / regular_per_person))
    accuracy = rng.uniform(0.55, 0.95, n_workers)
    max_answers = rng.integers(1, cap + 1, n_workers)
    workload = max_answers / max_answers.sum()
    return Crowd(
        "sparse crowd",
        _one_coin(accuracy),
        workload,
        f"{n_workers} people with 1-{cap} answers each (1 gold check each), accuracy 0.55-0.95",
        max_answers=max_answers,
        gold_first=gold_first,
    )


def crowd_item_difficulty(rng: np.random.Generator, n_items: int, n_workers: int = 40) -> Crowd:
    ability = rng.uniform(0.5, 3.0, n_workers)
    difficulty = rng.beta(2, 2, n_items) * 1.6 + 0.05  # some items are near-impossible
    return Crowd(
        "item difficulty",
        _one_coin(np.full(n_workers, 0.8)),  # unused: answers follow the GLAD model
        _zipf_workload(n_workers, rng, exponent=0.5),
        f"{n_workers} people of ability 0.5-3; items of difficulty 0.05-1.65; P(right) = sigmoid(ability / difficulty)",
        item_difficulty=difficulty,
        ability=ability,
    )


def regimes(rng: np.random.Generator, n_items: int) -> list[Crowd]:
    """The five regimes of issue 3, in report order."""
    return [
        crowd_reliable_staff(rng),
        crowd_spammers(rng),
        crowd_class_confusers(rng),
        crowd_sparse(rng, n_items),
        crowd_item_difficulty(rng, n_items),
    ]


class AnswerStream:
    """Hands out answers for items on demand, each from an annotator who has not answered that item,
    respecting workloads and caps. Gold items are mixed in as the router does: each annotator's first
    `gold_first` answers go to gold items, then a `gold_rate` share.
    """

    def __init__(
        self,
        crowd: Crowd,
        truth: np.ndarray,
        rng: np.random.Generator,
        *,
        gold_items: np.ndarray | None = None,
        gold_first: int = 5,
        gold_rate: float = 0.05,
    ):
        self.crowd = crowd
        self.truth = truth
        self.rng = rng
        self.answered: list[set[int]] = [set() for _ in range(len(truth))]
        self.count = np.zeros(crowd.n_workers, dtype=np.int64)
        self.gold_items = np.asarray(gold_items if gold_items is not None else [], dtype=np.int64)
        if crowd.gold_first is not None:
            gold_first = crowd.gold_first
        self.gold_first = gold_first if len(self.gold_items) else 0
        self.gold_rate = gold_rate if len(self.gold_items) else 0.0
        self.tasks: list[int] = []
        self.workers: list[int] = []
        self.labels: list[int] = []

    def _pick_worker(self, item: int) -> int | None:
        weights = self.crowd.workload.copy()
        if self.crowd.max_answers is not None:
            weights[self.count >= self.crowd.max_answers] = 0
        for w in self.answered[item]:
            weights[w] = 0
        total = weights.sum()
        if total <= 0:
            return None
        return int(self.rng.choice(len(weights), p=weights / total))

    def _record(self, worker: int, item: int) -> None:
        label = self.crowd.answer(np.array([worker]), self.truth[[item]], np.array([item]), self.rng)[0]
        self.answered[item].add(worker)
        self.count[worker] += 1
        self.tasks.append(item)
        self.workers.append(worker)
        self.labels.append(int(label))

    def _maybe_gold(self, worker: int) -> None:
        """Before a regular answer, the router may hand this annotator a gold item instead."""
        while len(self.gold_items) and (self.count[worker] < self.gold_first or self.rng.random() < self.gold_rate):
            if self.crowd.max_answers is not None and self.count[worker] >= self.crowd.max_answers[worker] - 1:
                return
            fresh = [g for g in self.gold_items if worker not in self.answered[g]]
            if not fresh:
                return
            self._record(worker, int(self.rng.choice(fresh)))
            if self.count[worker] >= self.gold_first:
                return

    def ask(self, items) -> int:
        """One more answer for each item in `items`. Returns how many were given (people can run out)."""
        given = 0
        for item in items:
            worker = self._pick_worker(int(item))
            if worker is None:
                continue
            self._maybe_gold(worker)
            if self.crowd.max_answers is not None and self.count[worker] >= self.crowd.max_answers[worker]:
                continue
            self._record(worker, int(item))
            given += 1
        return given

    def arrays(self):
        """(task, worker, label) int64 arrays of everything answered so far."""
        return (
            np.asarray(self.tasks, dtype=np.int64),
            np.asarray(self.workers, dtype=np.int64),
            np.asarray(self.labels, dtype=np.int64),
        )
