"""Withheld suggestions: a matching head that finds no catalog product in a photo (top-1 cosine under
its rejection threshold) withdraws the photo's candidates (annotate.learning.matching_apply); the
verify page and the API then offer only none / not a product / unfit, and a later head that does
suggest products restores them.

The heads here are untrained (their low-rank update starts at zero, so they rank exactly as the
pretrained cosine does) with a hand-set threshold, over 8-dimensional embeddings: the 4 products are
the first 4 unit vectors, a "catalog" photo is product 0's vector (cosine 1) and a "non-product"
photo is the last unit vector (cosine 0 with every product). A threshold of 0.5 therefore rejects
exactly the non-product photos; no threshold rejects nothing."""

import json
import re
from datetime import timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest
from django.urls import reverse
from django.utils import timezone

from annotate import learning, services
from annotate.consensus.services import consensus_recompute
from annotate.exports import services as exports
from annotate.models import Answer, Campaign, Lease, Task, TaskCandidate
from gamify.models import AnswerPoints
from mlcore import training
from mlcore.models import ModelVersion, PhotoEmbedding, ProductEmbedding
from mlcore.nn.matching import MatchConfig, MatchHead, match_head_save

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, ModelVersionFactory, ProductFactory, task_with_candidates, user_with_role

HTMX = {"HTTP_HX_REQUEST": "true"}
UNIT = np.eye(8, dtype=np.float32)
CATALOG, NON_PRODUCT = UNIT[0], UNIT[7]


@pytest.fixture
def campaign(db):
    embedding = ModelVersionFactory(name="synthetic-8d", embedding_dim=8)
    campaign = CampaignFactory(slug="lunch", model_version=embedding, gold_first_count=0, gold_rate=0)
    campaign.products = [ProductFactory() for _ in range(4)]
    for product, vector in zip(campaign.products, UNIT[:4], strict=True):
        ProductEmbedding.objects.create(product=product, model_version=embedding, vector=vector.tobytes())
    return campaign


def photo_task(campaign, vector, *, shuffle_key=None) -> Task:
    """An open task whose 3 pretrained candidates are products 1..3 (never product 0), its photo
    embedded as `vector`."""
    task = task_with_candidates(campaign, products=campaign.products[1:], shuffle_key=shuffle_key)
    PhotoEmbedding.objects.create(photo=task.photo, model_version=campaign.model_version, vector=vector.tobytes())
    return task


def head(campaign, tmp_path, name: str, *, threshold: float | None, status=ModelVersion.Status.ACTIVE):
    """A registered matching head of `campaign`: untrained (ranks as the cosine does) with `threshold`."""
    path = tmp_path / f"{name}.pt"
    sha256 = match_head_save(MatchHead(8, MatchConfig(rank=4)), path, extra={"threshold": threshold})
    return ModelVersion.objects.create(
        name=name,
        kind=ModelVersion.Kind.MATCHING,
        status=status,
        scope=learning.matching_scope_of(campaign),
        backbone="synthetic",
        image_size_px=32,
        embedding_dim=8,
        weights_path=str(path),
        checkpoint_sha256=sha256,
        config={"embedding_version": str(campaign.model_version.uuid)},
    )


def candidates_of(task) -> list[int]:
    return list(TaskCandidate.objects.filter(task=task).order_by("rank").values_list("product_id", flat=True))


def withheld_by(task):
    return Task.objects.values_list("suggestions_withheld_by", flat=True).get(pk=task.pk)


# -- matching_apply ---------------------------------------------------------------------------------


def test_a_rejected_photo_loses_its_candidates_and_records_the_head(campaign, tmp_path):
    catalog, non_product = photo_task(campaign, CATALOG), photo_task(campaign, NON_PRODUCT)
    strict = head(campaign, tmp_path, "head-strict", threshold=0.5)
    counts = learning.matching_apply(campaign=campaign)
    assert counts == {"tasks": 2, "resuggested": 1, "withheld": 1, "restored": 0}
    assert candidates_of(non_product) == [] and withheld_by(non_product) == strict.pk
    # The photo the head recognises gets its product first, and no flag.
    assert candidates_of(catalog)[0] == campaign.products[0].pk and len(candidates_of(catalog)) == 3
    assert withheld_by(catalog) is None
    # Idempotent: the same head again writes the same state.
    assert learning.matching_apply(campaign=campaign) == counts
    assert candidates_of(non_product) == [] and withheld_by(non_product) == strict.pk


def test_a_head_without_a_threshold_withholds_nothing(campaign, tmp_path):
    non_product = photo_task(campaign, NON_PRODUCT)
    head(campaign, tmp_path, "head-open", threshold=None)
    assert learning.matching_apply(campaign=campaign)["withheld"] == 0
    assert len(candidates_of(non_product)) == 3 and withheld_by(non_product) is None


def test_leased_answered_gold_and_complete_photos_are_never_touched(campaign, tmp_path, monkeypatch):
    person = user_with_role("employee")
    later = timezone.now() + timedelta(minutes=5)
    leased, answered, gold, complete, leased_meanwhile = (photo_task(campaign, NON_PRODUCT) for _ in range(5))
    Lease.objects.create(task=leased, annotator=person, expires_at=later)
    Task.objects.filter(pk=answered.pk).update(answer_count=1)
    Task.objects.filter(pk=gold.pk).update(is_gold=True)
    Task.objects.filter(pk=complete.pk).update(status=Task.Status.COMPLETE, label="none")
    # A person is handed this task while the head is scoring the photos: the re-check under the row
    # lock must see the lease.
    from mlcore.nn import matching

    score = matching.suggest

    def suggest_while_a_lease_is_taken(*args, **kwargs):
        Lease.objects.get_or_create(task=leased_meanwhile, annotator=person, defaults={"expires_at": later})
        return score(*args, **kwargs)

    monkeypatch.setattr(matching, "suggest", suggest_while_a_lease_is_taken)
    head(campaign, tmp_path, "head-strict", threshold=0.5)
    before = {t.pk: candidates_of(t) for t in (leased, answered, gold, complete, leased_meanwhile)}
    counts = learning.matching_apply(campaign=campaign)
    assert counts == {"tasks": 0, "resuggested": 0, "withheld": 0, "restored": 0}
    for task in (leased, answered, gold, complete, leased_meanwhile):
        assert candidates_of(task) == before[task.pk] and len(before[task.pk]) == 3
        assert withheld_by(task) is None


def test_a_later_head_that_suggests_restores_the_candidates_and_an_answered_photo_keeps_its_record(campaign, tmp_path):
    non_product, answered_later = photo_task(campaign, NON_PRODUCT), photo_task(campaign, NON_PRODUCT)
    strict = head(campaign, tmp_path, "head-strict", threshold=0.5)
    learning.matching_apply(campaign=campaign)
    assert withheld_by(non_product) == withheld_by(answered_later) == strict.pk
    Task.objects.filter(pk=answered_later.pk).update(answer_count=1)
    ModelVersion.objects.filter(pk=strict.pk).update(status=ModelVersion.Status.RETIRED)
    head(campaign, tmp_path, "head-open", threshold=None)
    counts = learning.matching_apply(campaign=campaign)
    assert counts == {"tasks": 1, "resuggested": 1, "restored": 1, "withheld": 0}
    assert len(candidates_of(non_product)) == 3 and withheld_by(non_product) is None
    # People answered it without suggestions: it stays as they saw it.
    assert candidates_of(answered_later) == [] and withheld_by(answered_later) == strict.pk


def test_promotion_withholds_and_a_rollback_restores(campaign, tmp_path, django_capture_on_commit_callbacks):
    non_product = photo_task(campaign, NON_PRODUCT)
    scope = learning.matching_scope_of(campaign)
    first = head(campaign, tmp_path, "head-open", threshold=None, status=ModelVersion.Status.CANDIDATE)
    with django_capture_on_commit_callbacks(execute=True):
        assert training.candidate_promote(candidate=first)[0]
    assert len(candidates_of(non_product)) == 3 and withheld_by(non_product) is None
    second = head(campaign, tmp_path, "head-strict", threshold=0.5, status=ModelVersion.Status.CANDIDATE)
    with django_capture_on_commit_callbacks(execute=True):
        assert training.candidate_promote(candidate=second)[0]  # no held-out rows: promoted
    assert candidates_of(non_product) == [] and withheld_by(non_product) == second.pk
    with django_capture_on_commit_callbacks(execute=True):
        assert training.rollback(scope=scope) == first
    assert len(candidates_of(non_product)) == 3 and withheld_by(non_product) is None


# -- the verify page --------------------------------------------------------------------------------


@pytest.fixture
def withheld(campaign, tmp_path):
    """A campaign whose only open photo the active head withheld suggestions from."""
    task = photo_task(campaign, NON_PRODUCT)
    campaign.head = head(campaign, tmp_path, "head-strict", threshold=0.5)
    learning.matching_apply(campaign=campaign)
    assert withheld_by(task) == campaign.head.pk
    return task


def verify_url(campaign):
    return reverse("annotate:verify", args=[campaign.slug])


def answer_url(campaign):
    return reverse("annotate:verify-answer", args=[campaign.slug])


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_the_no_suggestion_state_permission_matrix(client, as_role, campaign, withheld, role):
    as_role(role)
    response = client.get(verify_url(campaign))
    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    elif role in ("employee", "admin"):
        assert response.status_code == 200 and "found no catalog product" in response.content.decode()
    else:
        assert response.status_code == 403


def test_the_page_shows_the_photo_and_only_the_rejections(client, employee, campaign, withheld):
    client.force_login(employee)
    html = client.get(verify_url(campaign), **HTMX).content.decode()
    task = html[: html.index('<form class="undo"')]
    assert withheld.photo.image.url in task
    assert "The model found no catalog product in this photo" in task and "(model head-strict)" in task
    assert "Which of these products" not in task
    assert 'value="product:' not in task and 'class="candidate"' not in task
    assert sorted(k for k in ("0", "x", "u", "1", "2", "3") if f'data-key="{k}"' in task) == ["0", "u", "x"]
    for value in ("none", "not_a_product", "unfit"):
        assert f'name="pick" value="{value}"' in task


def test_not_a_product_is_accepted_and_the_next_task_comes_as_a_partial(client, employee, campaign, withheld):
    client.force_login(employee)
    page = client.get(verify_url(campaign)).content.decode()
    assert f'name="task" value="{withheld.uuid}"' in page
    following = task_with_candidates(campaign)  # a regular task, next in the queue
    key = page.split('name="idempotency_key" value="')[1].split('"')[0]
    response = client.post(
        answer_url(campaign),
        {"task": withheld.uuid, "idempotency_key": key, "pick": "not_a_product", "duration_ms": "1400"},
        **HTMX,
    )
    html = response.content.decode()
    assert response.status_code == 200 and response["HX-Trigger"] == "answer-saved"
    assert html.lstrip().startswith('<section id="task"') and f'name="task" value="{following.uuid}"' in html
    answer = Answer.objects.get()
    assert (answer.task_id, answer.choice, answer.label, answer.product) == (
        withheld.pk,
        "not_a_product",
        "not_a_product",
        None,
    )


def test_a_product_pick_is_refused_with_a_clear_error(client, employee, campaign, withheld):
    client.force_login(employee)
    client.get(verify_url(campaign))
    product = campaign.products[0]
    response = client.post(
        answer_url(campaign),
        {"task": withheld.uuid, "idempotency_key": "k1", "pick": f"product:{product.uuid}", "duration_ms": "1400"},
        **HTMX,
    )
    html = response.content.decode()
    assert "That answer was not saved" in html and "no suggested product to pick" in html
    assert not Answer.objects.exists()
    with pytest.raises(services.AnswerInvalid) as raised:
        services.answer_submit(
            user=employee,
            task=withheld,
            choice="product",
            product_uuid=product.uuid,
            duration_ms=900,
            idempotency_key="k2",
        )
    assert "no suggested product to pick" in " ".join(raised.value.errors["choice"])


def test_answering_withheld_photos_stays_within_the_pinned_query_count(
    client, employee, campaign, tmp_path, django_assert_max_num_queries
):
    for key in range(1, 4):
        photo_task(campaign, NON_PRODUCT, shuffle_key=key)
    head(campaign, tmp_path, "head-strict", threshold=0.5)
    assert learning.matching_apply(campaign=campaign)["withheld"] == 3
    client.force_login(employee)

    def fields_on_screen():
        page = client.get(verify_url(campaign)).content.decode()
        return {**dict(re.findall(r'name="(task|idempotency_key)" value="([^"]+)"', page)), "pick": "none"}

    client.post(answer_url(campaign), fields_on_screen(), **HTMX)  # the first answer also creates the stats row
    fields = fields_on_screen()
    # The same bound as the page with candidates (tests/annotate/test_views.py): a task without
    # candidates skips the products, retailers and images reads.
    with django_assert_max_num_queries(56):
        response = client.post(answer_url(campaign), {**fields, "duration_ms": "900"}, **HTMX)
    assert response["HX-Trigger"] == "answer-saved" and Answer.objects.count() == 2


def test_the_task_selector_reads_a_withheld_photo_in_2_queries(withheld, django_assert_num_queries):
    from annotate import selectors

    with django_assert_num_queries(2):  # the task with its photo, campaign and head; no candidates
        task = selectors.task_with_candidates(withheld.pk)
        assert task.suggestions_withheld_by.name == "head-strict" and list(task.candidates.all()) == []


def test_the_api_offers_no_product_choice_and_refuses_one(api, employee, campaign, withheld):
    api.force_authenticate(employee)
    data = api.get(f"/api/v1/campaigns/{campaign.slug}/next-task").json()
    assert data["uuid"] == str(withheld.uuid) and data["candidates"] == []
    assert data["choices"] == ["none", "not_a_product", "unfit"]
    assert data["suggestions_withheld_by"] == "head-strict"
    url = f"/api/v1/tasks/{withheld.uuid}/answers"
    refused = api.post(
        url,
        {"choice": "product", "product": str(campaign.products[0].uuid), "duration_ms": 900, "idempotency_key": "a"},
        format="json",
    )
    assert refused.status_code == 400 and "no suggested product to pick" in json.dumps(refused.json())
    accepted = api.post(url, {"choice": "unfit", "duration_ms": 900, "idempotency_key": "b"}, format="json")
    assert accepted.status_code == 201


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_the_ml_page_counts_the_photos_each_head_withheld(client, as_role, campaign, withheld, role):
    Task.objects.filter(pk=photo_task(campaign, NON_PRODUCT).pk).update(
        suggestions_withheld_by=campaign.head, answer_count=1
    )
    as_role(role)
    response = client.get("/learning/")
    if role not in ("ml", "admin"):
        assert response.status_code == (302 if role == "anonymous" else 403)
        return
    body = response.content.decode()
    assert "photos withheld (unanswered)" in body and "its suggestions are withheld" in body
    row = body[body.index("<td>head-strict</td>") :]
    assert "<td>2 (1)</td>" in row[: row.index("</tr>")]


# -- consensus, points and exports of a withheld photo ----------------------------------------------


def test_a_withheld_photo_settles_earns_points_and_exports_with_empty_candidates(
    campaign, withheld, django_capture_on_commit_callbacks
):
    Campaign.objects.filter(pk=campaign.pk).update(overlap_min=2, overlap_max=2, model_votes=True)
    campaign.refresh_from_db()
    people = [user_with_role("employee") for _ in range(2)]
    for n, person in enumerate(people):
        services.answer_submit(
            user=person, task=withheld, choice="not_a_product", duration_ms=1500, idempotency_key=f"p{n}"
        )
    consensus_recompute(campaign_id=campaign.pk)  # the full EM, model voter on: no candidate score to vote on
    withheld.refresh_from_db()
    assert withheld.status == Task.Status.COMPLETE and withheld.label == "not_a_product"
    points = AnswerPoints.objects.filter(task=withheld)
    assert points.count() == 2 and all(p.points > 0 and p.outcome == "agree" for p in points)
    with django_capture_on_commit_callbacks(execute=True):
        snapshot = exports.export_create(name="withheld", formats=["jsonl", "csv", "parquet", "label_studio"])
    snapshot.refresh_from_db()
    assert snapshot.status == "done", snapshot.error
    path = exports.export_file_path(snapshot=snapshot, path="jsonl/items.jsonl")
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["task"] == str(withheld.uuid) and record["candidates"] == []
    assert record["suggestions_withheld_by"] == "head-strict"
    match = record["labels"]["match"]
    assert match["label"] == "not_a_product" and match["product"] is None and match["provenance"] == "human"
    table = pq.read_table(exports.export_file_path(snapshot=snapshot, path="parquet/items.parquet"))
    assert table.column("suggestions_withheld_by").to_pylist() == ["head-strict"]
    assert table.column("candidates").to_pylist() == [[]]
    csv_text = exports.export_file_path(snapshot=snapshot, path="csv/items.csv").read_text()
    assert "suggestions_withheld_by" in csv_text.splitlines()[0] and ",[],head-strict," in csv_text
    (studio,) = json.loads(exports.export_file_path(snapshot=snapshot, path="label_studio/tasks.json").read_text())
    assert studio["data"]["candidates"] == [] and studio["data"]["suggestions_withheld_by"] == "head-strict"
