"""Gold that nobody can tell apart (issue 14, finding 1): an attacker who knows the old routing rule
(gold decided by the client's `seed` and the answer count) tries, over 200 tasks, to predict gold, to
seek it and to avoid it, through the API as a logged-in employee. Whether a task is gold now comes
from the server's own draw (services.gold_draw), so the attacker must do no better than chance."""

import random

import pytest
from scipy.stats import binomtest, fisher_exact

from annotate import services
from annotate.models import Campaign, Task

from ..factories import CampaignFactory, ProductFactory, task_with_candidates, user_with_role

ROUNDS = 200
GOLD_RATE = 0.2
EARLY_RATE = 0.5
FIRST = 5


def old_gold_due(*, answered: int, seed: int) -> bool:
    """The rule before issue 14: always gold for the first gold_first_count answers, then
    Random(f"{seed}:{answered}") < gold_rate. The attacker's model of the router."""
    return answered < FIRST or random.Random(f"{seed}:{answered}").random() < GOLD_RATE


def seed_for(*, answered: int, want_gold: bool) -> int:
    """A seed that makes the old rule say gold (or not) after `answered` answers."""
    for seed in range(10_000):
        if old_gold_due(answered=answered, seed=seed) == want_gold:
            return seed
    raise AssertionError("no such seed")


@pytest.fixture
def campaign(db):
    campaign = CampaignFactory(
        slug="attacked",
        gold_first_count=FIRST,
        gold_early_rate=EARLY_RATE,
        gold_rate=GOLD_RATE,
        overlap_max=7,
        min_duration_ms=0,
    )
    products = [ProductFactory() for _ in range(3)]
    for i in range(ROUNDS + 80):
        task = task_with_candidates(campaign, products=products)
        if i < 80:
            services.gold_set(task=task, label="none")
    return campaign


def test_the_attacker_of_finding_1_does_no_better_than_chance(api, campaign, monkeypatch):
    # The product draws from the operating system; here from a generator whose seed the attacker
    # does not know, so that the test is reproducible.
    monkeypatch.setattr(services, "_gold_rng", random.Random(987654321))
    attacker = user_with_role("employee", username="mallory")
    api.force_authenticate(attacker)
    gold_ids = set(Task.objects.filter(campaign=campaign, is_gold=True).values_list("uuid", flat=True))
    table = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}  # (predicted, actual)
    served_gold = []
    for answered in range(ROUNDS):
        # Seek gold on even rounds, avoid it on odd ones (the old rule's early rounds are always
        # "gold"; the attacker predicts gold there).
        want = answered % 2 == 0 or answered < FIRST
        seed = seed_for(answered=answered, want_gold=want)
        response = api.get(f"/api/v1/campaigns/{campaign.slug}/next-task", {"seed": seed})
        assert response.status_code == 200, response.content
        task = response.json()
        actual = task["uuid"] in {str(u) for u in gold_ids}
        table[(want, actual)] += 1
        served_gold.append(actual)
        # Reloading never changes the task (the lease holds), so probing is pointless.
        again = api.get(f"/api/v1/campaigns/{campaign.slug}/next-task", {"seed": seed + 7919})
        assert again.json()["uuid"] == task["uuid"]
        answer = api.post(
            f"/api/v1/tasks/{task['uuid']}/answers",
            {"choice": "none", "duration_ms": 1500, "idempotency_key": f"a{answered}"},
            format="json",
        )
        assert answer.status_code == 201, answer.content

    # Gold was served at the configured rates, whatever the attacker asked for...
    late = served_gold[FIRST:]
    assert binomtest(sum(late), len(late), GOLD_RATE).pvalue > 0.01
    assert 0 < sum(late) < len(late)
    # ...and seeking, avoiding and predicting it with the old rule tells nothing: gold is no more
    # frequent where the attacker predicted it than where they did not.
    contingency = [[table[(True, True)], table[(True, False)]], [table[(False, True)], table[(False, False)]]]
    _, p_value = fisher_exact(contingency)
    assert p_value > 0.05, contingency
    accuracy = (table[(True, True)] + table[(False, False)]) / ROUNDS
    majority = max(sum(served_gold), ROUNDS - sum(served_gold)) / ROUNDS  # always guessing "regular"
    assert accuracy <= majority, (accuracy, majority, contingency)
    # (That early tasks are a draw, not always gold, is test_a_new_annotators_first_task_is_gold_by_chance….)


def test_a_new_annotators_first_task_is_gold_by_chance_not_by_count(campaign):
    Campaign.objects.filter(pk=campaign.pk).update(gold_early_rate=0.5)
    campaign.refresh_from_db()
    first_is_gold = []
    for i in range(40):
        person = user_with_role("employee", username=f"new-{i}")
        first_is_gold.append(services.task_next_for(user=person, campaign=campaign, seed=0).is_gold)
    assert 0 < sum(first_is_gold) < 40
    assert binomtest(sum(first_is_gold), 40, 0.5).pvalue > 0.01
    assert services.gold_probability(answered=0, campaign=campaign) == 0.5
    assert services.gold_probability(answered=FIRST, campaign=campaign) == GOLD_RATE
