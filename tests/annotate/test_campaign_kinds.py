"""Campaign kinds are enforced everywhere (issue 14, finding 2): a match endpoint never serves or
accepts an attributes campaign's product task, and a tagging endpoint never a match campaign's
photo task. Every page, API endpoint and service is crossed with both kinds, as an admin (who holds
every role, so only the kind can refuse)."""

import uuid

import pytest
from django.urls import reverse

from annotate import services, tagging
from annotate.models import Answer, Campaign, GoldLabel, GuideRead, Task
from catalog.attribute_schema import attribute_schema_ensure
from catalog.models import TaxonomyNode
from catalog.services import taxonomy_path_ensure

from ..factories import CampaignFactory, ProductFactory, task_with_candidates, user_with_role

SANDAL = "Shoes › Sandal"


@pytest.fixture
def both(db):
    """(match campaign, its photo task, attributes campaign, its product task, admin)."""
    taxonomy_path_ensure(path=SANDAL)
    schema = {a.slug: a for a in attribute_schema_ensure()}
    match = CampaignFactory(slug="lunch")
    match_task = task_with_candidates(match)
    attributes = CampaignFactory(
        slug="tagging", name="Catalog tagging", kind=Campaign.Kind.ATTRIBUTES, gold_first_count=0, gold_rate=0
    )
    attributes.attributes.set([schema["color"]])
    product = ProductFactory(master_category=TaxonomyNode.objects.get(path=SANDAL))
    tagging.tag_tasks_build(campaign=attributes, products=[product])
    product_task = Task.objects.get(campaign=attributes, product=product)
    admin = user_with_role("admin", username="ada")
    GuideRead.objects.create(campaign=attributes, user=admin)
    return match, match_task, attributes, product_task, admin


# -- HTML pages ------------------------------------------------------------------------------------------


def test_the_verify_pages_refuse_an_attributes_campaign(client, both):
    match, match_task, attributes, product_task, admin = both
    client.force_login(admin)
    assert client.get(reverse("annotate:verify", args=[attributes.slug])).status_code == 404
    assert client.get(reverse("gamify:sprint", args=[attributes.slug])).status_code == 404
    response = client.post(
        reverse("annotate:verify-answer", args=[attributes.slug]),
        {"task": str(product_task.uuid), "pick": "none", "duration_ms": 2000, "idempotency_key": "k1"},
    )
    assert response.status_code == 404
    # The product task through the match campaign's own URL: still refused.
    response = client.post(
        reverse("annotate:verify-answer", args=[match.slug]),
        {"task": str(product_task.uuid), "pick": "none", "duration_ms": 2000, "idempotency_key": "k2"},
    )
    assert response.status_code == 404
    assert client.post(reverse("annotate:verify-undo", args=[attributes.slug])).status_code == 404
    assert not Answer.objects.exists()
    # The match campaign itself still works.
    assert client.get(reverse("annotate:verify", args=[match.slug])).status_code == 200


def test_the_tagging_pages_refuse_a_match_campaign(client, both):
    match, match_task, attributes, product_task, admin = both
    client.force_login(admin)
    for name in ("annotate:tag", "annotate:tag-guide"):
        assert client.get(reverse(name, args=[match.slug])).status_code == 404
    response = client.post(
        reverse("annotate:tag-answer", args=[match.slug]),
        {"task": str(match_task.uuid), "color": "black", "duration_ms": 2000, "idempotency_key": "k1"},
    )
    assert response.status_code == 404
    # A photo task posted to the attributes campaign's form: not one of its products.
    response = client.post(
        reverse("annotate:tag-answer", args=[attributes.slug]),
        {"task": str(match_task.uuid), "color": "black", "duration_ms": 2000, "idempotency_key": "k2"},
    )
    assert response.status_code == 404
    assert not Answer.objects.exists()
    assert client.get(reverse("annotate:tag", args=[attributes.slug])).status_code == 200


def test_the_agreement_report_and_the_learning_actions_check_the_kind(client, both):
    match, match_task, attributes, product_task, admin = both
    client.force_login(admin)
    assert client.get(reverse("annotate:agreement-report", args=[match.slug])).status_code == 404
    # Retraining the attribute heads of a match campaign, or the matching head of an attributes one,
    # is refused with a message, and no run is made.
    from mlcore.models import TrainingRun

    for name, campaign in (
        ("annotate:learning-retrain", match),
        ("annotate:matching-retrain", attributes),
        ("annotate:matching-pretrain", attributes),
    ):
        response = client.post(reverse(name, args=[campaign.slug]), follow=True)
        assert response.status_code == 200
        assert any(m.level_tag == "error" for m in response.context["messages"])
    assert not TrainingRun.objects.exists()


# -- the API ---------------------------------------------------------------------------------------------


def test_next_task_refuses_an_attributes_campaign_with_a_code(api, both):
    match, match_task, attributes, product_task, admin = both
    api.force_authenticate(admin)
    response = api.get(f"/api/v1/campaigns/{attributes.slug}/next-task")
    assert response.status_code == 404
    assert response.json()["code"] == "wrong_campaign_kind"
    assert "/tag/" in response.json()["detail"]
    assert api.get(f"/api/v1/campaigns/{match.slug}/next-task").json()["uuid"] == str(match_task.uuid)


def test_an_answer_to_a_product_task_is_refused_and_changes_nothing(api, both):
    match, match_task, attributes, product_task, admin = both
    api.force_authenticate(admin)
    before = Task.objects.values().get(pk=product_task.pk)
    response = api.post(
        f"/api/v1/tasks/{product_task.uuid}/answers",
        {"choice": "none", "duration_ms": 2000, "idempotency_key": "k1"},
        format="json",
    )
    assert response.status_code == 404
    assert response.json()["code"] == "wrong_campaign_kind"
    assert not Answer.objects.exists()
    assert Task.objects.values().get(pk=product_task.pk) == before


def test_gold_cannot_be_set_on_a_product_task(api, both):
    match, match_task, attributes, product_task, admin = both
    api.force_authenticate(admin)
    response = api.put(f"/api/v1/tasks/{product_task.uuid}/gold", {"choice": "none"}, format="json")
    assert response.status_code == 404
    assert response.json()["code"] == "wrong_campaign_kind"
    assert api.delete(f"/api/v1/tasks/{product_task.uuid}/gold").status_code == 404
    assert not GoldLabel.objects.exists()
    assert api.put(f"/api/v1/tasks/{match_task.uuid}/gold", {"choice": "none"}, format="json").status_code == 200


def test_an_unknown_task_is_still_a_plain_404(api, both):
    *_, admin = both
    api.force_authenticate(admin)
    response = api.post(
        f"/api/v1/tasks/{uuid.uuid4()}/answers", {"choice": "none", "duration_ms": 1, "idempotency_key": "k"}
    )
    assert response.status_code == 404
    assert response.json().get("code") != "wrong_campaign_kind"


# -- services --------------------------------------------------------------------------------------------


def test_the_services_refuse_the_other_kind(both):
    match, match_task, attributes, product_task, admin = both
    with pytest.raises(services.WrongCampaignKind):
        services.answer_submit(user=admin, task=product_task, choice="none", duration_ms=2000, idempotency_key="k1")
    with pytest.raises(services.WrongCampaignKind):
        tagging.tag_submit(
            user=admin, task=match_task, values={"color": "black"}, duration_ms=2000, idempotency_key="k2"
        )
    with pytest.raises(services.WrongCampaignKind):
        services.gold_set(task=product_task, label="none")
    with pytest.raises(services.WrongCampaignKind):
        tagging.tag_next_for(user=admin, campaign=match, seed=1)
    assert not Answer.objects.exists()
    assert not GoldLabel.objects.exists()


def test_skip_and_the_tagging_undo_refuse_the_other_kind(client, both):
    """The pages added by issue 16 (k skips on both pages, z undoes a tagging answer) are crossed too:
    nothing is skipped or undone through the other kind's URL."""
    from annotate.models import Skip

    match, match_task, attributes, product_task, admin = both
    client.force_login(admin)
    # verify's skip on the attributes campaign, and on the match campaign with a product task
    assert client.post(reverse("annotate:verify-skip", args=[attributes.slug]),
                       {"task": str(product_task.uuid)}).status_code == 404
    assert client.post(reverse("annotate:verify-skip", args=[match.slug]),
                       {"task": str(product_task.uuid)}).status_code == 404
    # tagging's skip and undo on the match campaign, and tagging's skip with the photo task
    assert client.post(reverse("annotate:tag-skip", args=[match.slug]),
                       {"task": str(match_task.uuid)}).status_code == 404
    assert client.post(reverse("annotate:tag-skip", args=[attributes.slug]),
                       {"task": str(match_task.uuid)}).status_code == 404
    assert client.post(reverse("annotate:tag-undo", args=[match.slug])).status_code == 404
    assert not Skip.objects.exists()
