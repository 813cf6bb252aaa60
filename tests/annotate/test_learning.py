"""The learning loop of an attribute campaign (annotate.learning): people settle labels, a retrain
runs from a frozen snapshot, the model is promoted, and it pre-fills, auto-accepts (except an audit
sample) and re-ranks the open products. Synthetic 8-dimensional image embeddings and the image
model only (text_encoder "none"), so it runs in seconds on CPU."""

import json

import numpy as np
import pytest

from annotate import learning, tagging
from annotate.exports.formats import file_sha256
from annotate.exports.services import snapshot_folder
from annotate.models import AttributeLabel, Campaign, ExportSnapshot, Task
from catalog.attribute_schema import attribute_schema_ensure
from catalog.models import TaxonomyNode
from catalog.services import taxonomy_path_ensure
from mlcore.models import AttributePrediction, ModelVersion, ProductEmbedding, TrainingRun

from ..factories import CampaignFactory, ModelVersionFactory, ProductFactory, user_with_role

COLORS = ["red", "blue", "green"]
SEASON_OF = {"red": "spring|summer", "blue": "autumn|winter", "green": ""}  # season follows the cluster
_keys = iter(range(10**9))


@pytest.fixture
def loop(db):
    return _loop_build(["color"])


def _loop_build(slugs: list[str]):
    """An attribute campaign asking `slugs` over 90 products in three embedding clusters (the colour
    and, when asked, SEASON_OF the colour follow the cluster); one person settles the first 60."""
    taxonomy_path_ensure(path="Clothing › Dresses › Dress")
    schema = {a.slug: a for a in attribute_schema_ensure()}
    embedding = ModelVersionFactory(name="synthetic-8d", embedding_dim=8)
    campaign = CampaignFactory(
        slug="tagging",
        kind=Campaign.Kind.ATTRIBUTES,
        overlap_min=1,
        overlap_max=1,
        confidence_target=0.5,
        model_version=embedding,
        learning_enabled=True,
        retrain_every_labels=50,
        audit_share=0.3,  # 30 open products: an audit sample of none would be a 1-in-25 draw at 0.1
    )
    campaign.attributes.set([schema[slug] for slug in slugs])
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    dress = TaxonomyNode.objects.get(path="Clothing › Dresses › Dress")
    products, colours = [], []
    for i in range(90):
        product = ProductFactory(master_category=dress, image=False)
        vector = (centres[i % 3] + rng.normal(size=8)).astype(np.float32)
        ProductEmbedding.objects.create(product=product, model_version=embedding, vector=vector.tobytes())
        products.append(product)
        colours.append(COLORS[i % 3])
    tagging.tag_tasks_build(campaign=campaign, products=products)
    people = [user_with_role("tagger")]  # one answer settles a label (overlap 1): a fast fixture
    tasks = {t.product_id: t for t in Task.objects.filter(campaign=campaign).select_related("campaign", "product")}
    for product, colour in list(zip(products, colours, strict=True))[:60]:  # people settle 60 products
        for person in people:
            tagging.tag_submit(
                user=person,
                task=tasks[product.pk],
                values={"color": colour, "season": SEASON_OF[colour]} if "season" in slugs else {"color": colour},
                duration_ms=4000,
                idempotency_key=f"k{next(_keys)}",
            )
    return campaign, products, colours


# A point-estimate threshold: the 6 or so validation products could never reach a 98% Wilson bound.
CONFIG = {
    "text_encoder": "none",
    "epochs": 20,
    "batch_size": 16,
    "lr": 0.05,
    "min_accepted": 3,
    "threshold_bound": "point",
}


def test_snapshot_retrain_promote_then_auto_accept_and_rerank(loop, django_capture_on_commit_callbacks):
    campaign, products, colours = loop
    with django_capture_on_commit_callbacks(execute=True):
        run = learning.retrain_start(campaign=campaign, reason="test", config=CONFIG)
    run.refresh_from_db()
    # The snapshot is an export the ML team can download: frozen, hashed, one product per line.
    snapshot = ExportSnapshot.objects.get(uuid=run.snapshot_uuid)
    assert snapshot.status == ExportSnapshot.Status.DONE and snapshot.name == "training-tagging"
    path = snapshot_folder(snapshot) / "items.jsonl"
    assert snapshot.files[0]["sha256"] == file_sha256(path) and snapshot.item_count == 60
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["split"] for r in records} <= {"train", "validation", "test"}
    assert all(r["labels"]["color"]["provenance"] == "human" for r in records)
    # Trained, promoted (no model before), and applied to the 30 open products.
    assert run.status == TrainingRun.Status.DONE and run.promoted
    active = ModelVersion.objects.get(scope="campaign:tagging", status=ModelVersion.Status.ACTIVE)
    assert active.metrics["attributes"]["color"]["accuracy"] >= 0.8
    open_products = [p.pk for p in products[60:]]
    predictions = AttributePrediction.objects.filter(model_version=active, product_id__in=open_products)
    assert predictions.count() == 30
    truth = {p.pk: c for p, c in zip(products, colours, strict=True)}
    assert sum(truth[p] == v for p, v in predictions.values_list("product_id", "value")) >= 27
    accepted = AttributeLabel.objects.filter(model_version=active)
    assert accepted.count() > 0 and all(label.is_settled and label.answer_count == 0 for label in accepted)
    assert Task.objects.filter(pk__in=accepted.values("task"), status=Task.Status.COMPLETE).count() == accepted.count()
    # The audit sample is left to people, flagged, with no model label.
    audit = Task.objects.filter(campaign=campaign, is_audit=True)
    assert audit.exists() and not AttributeLabel.objects.filter(task__in=audit, model_version__isnull=False).exists()
    assert all(t.status == Task.Status.OPEN for t in audit)
    # Open tasks carry the model's uncertainty as their routing priority.
    still_open = Task.objects.filter(campaign=campaign, status=Task.Status.OPEN, product_id__in=open_products)
    assert still_open.exists() and all(0 <= t.priority <= 100 for t in still_open)
    report = learning.learning_report(campaign=campaign)
    assert report["active"] == active and report["model_labels"] == accepted.count()
    assert report["humans_saved"] == accepted.count()  # people needed 1 answer per label


def test_the_model_does_not_learn_from_its_own_labels(loop, django_capture_on_commit_callbacks):
    campaign, *_ = loop
    with django_capture_on_commit_callbacks(execute=True):
        learning.retrain_start(campaign=campaign, config=CONFIG)
    assert AttributeLabel.objects.filter(model_version__isnull=False).exists()
    snapshot = learning.learning_snapshot(campaign=campaign)
    assert snapshot.version == 2 and snapshot.item_count == 60  # still only what people settled


def test_learning_due_waits_for_enough_new_labels(loop, django_capture_on_commit_callbacks):
    campaign, products, colours = loop
    with django_capture_on_commit_callbacks(execute=True):
        assert len(learning.learning_due()) == 1  # 60 labels >= 50: the first run
    assert learning.learning_due() == []  # nothing new since
    Campaign.objects.filter(pk=campaign.pk).update(learning_enabled=False)
    assert learning.learning_due() == []


def test_retrain_refuses_a_match_campaign(db):
    with pytest.raises(ValueError, match="attribute campaigns"):
        learning.retrain_start(campaign=CampaignFactory(slug="match"))


@pytest.mark.parametrize("role", ["anonymous", "employee", "tagger", "ml", "admin"])
def test_models_page_permission_matrix_and_content(client, as_role, loop, role, django_capture_on_commit_callbacks):
    campaign, *_ = loop
    if role in ("ml", "admin"):
        with django_capture_on_commit_callbacks(execute=True):
            learning.retrain_start(campaign=campaign, config=CONFIG)
    as_role(role)
    response = client.get("/learning/")
    if role in ("ml", "admin"):
        body = response.content.decode()
        assert response.status_code == 200 and "campaign:tagging" in body and "Active" in body
        assert "<polyline" in body and "labels settled by the model" in body
    else:
        assert response.status_code == (302 if role == "anonymous" else 403)


def test_retrain_and_rollback_buttons(client, as_role, loop, django_capture_on_commit_callbacks):
    campaign, *_ = loop
    as_role("anonymous")
    assert client.post(f"/learning/{campaign.slug}/retrain").status_code == 302
    assert client.post(f"/learning/{campaign.slug}/rollback").status_code == 302
    for role in ("employee", "tagger"):
        as_role(role)
        assert client.post(f"/learning/{campaign.slug}/retrain").status_code == 403
        assert client.post(f"/learning/{campaign.slug}/rollback").status_code == 403
    assert not TrainingRun.objects.exists()
    as_role("admin")
    assert client.get(f"/learning/{campaign.slug}/retrain").status_code == 405  # POST only
    assert client.post("/learning/no-such-campaign/retrain").status_code == 404
    # A match campaign has no tagging loop: a message, no run.
    CampaignFactory(slug="match-only")
    response = client.post("/learning/match-only/retrain", follow=True)
    assert "attribute campaigns" in response.content.decode() and not TrainingRun.objects.exists()
    as_role("ml")
    assert "Roll back to the previous model" not in client.get("/learning/").content.decode()  # none to go back to
    response = client.post(f"/learning/{campaign.slug}/rollback")
    assert response.status_code == 302  # nothing to roll back to: a message, nothing changes
    assert not ModelVersion.objects.filter(kind="tagging").exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/learning/{campaign.slug}/retrain").status_code == 302
    assert TrainingRun.objects.get().reason.startswith("by ")


def test_rolling_back_withdraws_the_models_labels_and_reopens_its_tasks(loop, django_capture_on_commit_callbacks):
    from mlcore import training

    campaign, *_ = loop
    with django_capture_on_commit_callbacks(execute=True):
        learning.retrain_start(campaign=campaign, config=CONFIG)
    first = training.active_model("campaign:tagging")
    first_labels = AttributeLabel.objects.filter(model_version=first).count()
    assert first_labels > 0
    assert not learning.learning_report(campaign=campaign)["can_roll_back"]  # no earlier model
    # A second model takes over (promoted by hand here), then is rolled back.
    second = ModelVersion.objects.create(
        name="second",
        kind="tagging",
        status="candidate",
        scope="campaign:tagging",
        backbone=first.backbone,
        image_size_px=first.image_size_px,
        embedding_dim=first.embedding_dim,
        weights_path=first.weights_path,
        checkpoint_sha256=first.checkpoint_sha256,
        config=first.config,
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert training.candidate_promote(candidate=second)[0]
    assert AttributeLabel.objects.filter(model_version=second).exists()
    assert learning.learning_report(campaign=campaign)["can_roll_back"]  # the first, retired
    reopened = set(AttributeLabel.objects.filter(model_version=second).values_list("task_id", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        assert training.rollback(scope="campaign:tagging") == first
    # The second model could only settle what was still open: the first model's audit sample. Rolled
    # back, its labels are withdrawn and those products are open for people again (the first
    # model's own audit pick); the first model's labels stand.
    assert reopened
    assert not AttributeLabel.objects.filter(model_version=second).exists()
    assert all(t.status == Task.Status.OPEN for t in Task.objects.filter(pk__in=reopened))
    assert AttributeLabel.objects.filter(model_version=first).count() == first_labels


def test_a_campaign_with_a_running_run_polls_its_section(client, as_role, loop):
    from mlcore.models import TrainingRun

    campaign, *_ = loop
    as_role("ml")
    assert 'hx-trigger="every 2s"' not in client.get("/learning/").content.decode()
    TrainingRun.objects.create(scope="campaign:tagging", status=TrainingRun.Status.RUNNING, epoch=3, epochs=30)
    body = client.get("/learning/").content.decode()
    assert 'id="learning-campaigntagging"' in body and 'hx-trigger="every 2s"' in body and "3/30" in body


# -- the category backs off to the deepest confident taxonomy node ----------------------------------------

SANDAL, SNEAKER, DRESS = "Shoes › Sandal", "Shoes › Sneaker", "Clothing › Dresses › Dress"


def _handmade_model(path, distributions: list[list[float]], *, values: list[str], thresholds: dict):
    """A real TaggingModel (saved, loaded and run by predictions_apply) whose category head gives
    product j, embedded as the one-hot vector e_j (8 dimensions), exactly distributions[j].

    The heads have no hidden layer: LayerNorm, then a linear layer. LayerNorm maps e_j to
    s * e_j - s / 8 (s = 1 / its standard deviation, the same for every j), so with column j of the
    weights log(p_j) / s and a bias cancelling the constant, the logits are log(p_j)."""
    import torch

    from mlcore import training
    from mlcore.nn import tagging as nt

    dim, k = 8, len(values)
    s = 1.0 / np.sqrt((1 / dim) * (1 - 1 / dim) + 1e-5)  # LayerNorm's eps
    weight = np.zeros((k, dim))
    weight[:, : len(distributions)] = np.log(np.array(distributions)).T / s
    image = nt.TaggingHeads(dim, {"category": k}, hidden_dim=0, dropout=0.0)
    text = nt.TaggingHeads(1, {"category": k}, hidden_dim=0, dropout=0.0)
    with torch.no_grad():
        image.heads["category"].weight.copy_(torch.from_numpy(weight))
        image.heads["category"].bias.copy_(torch.from_numpy(s / dim * weight.sum(axis=1)))
    image.heads_input, image.hidden_dim = dim, 0
    text.heads_input, text.hidden_dim = 1, 0
    model = training.TaggingModel(
        image_heads=image,
        text_heads=text,
        fusion={"category": nt.Fusion(w_image=1.0, w_text=0.0)},
        temperature={"category": 1.0},
        thresholds=thresholds,
        values={"category": values},
    )
    return model.save(path)


@pytest.fixture
def shoes(db):
    for path in (SANDAL, SNEAKER, DRESS):
        taxonomy_path_ensure(path=path)
    schema = {a.slug: a for a in attribute_schema_ensure()}
    embedding = ModelVersionFactory(name="one-hot-8d", embedding_dim=8)
    campaign = CampaignFactory(
        slug="shoes", kind=Campaign.Kind.ATTRIBUTES, model_version=embedding, audit_share=0.0, overlap_min=1
    )
    campaign.attributes.set([schema["category"]])
    sandal = TaxonomyNode.objects.get(path=SANDAL)
    products = []
    for j in range(3):
        product = ProductFactory(master_category=sandal, image=False)
        ProductEmbedding.objects.create(
            product=product, model_version=embedding, vector=np.eye(8, dtype=np.float32)[j].tobytes()
        )
        products.append(product)
    tagging.tag_tasks_build(campaign=campaign, products=products)
    return campaign, products, embedding


@pytest.mark.parametrize(
    ("thresholds", "campaign_precision"),
    [
        ({"category": 0.9}, 0.5),  # the model's threshold for the category rules, not the campaign's
        ({}, 0.9),  # the model has none (too few validation labels): the campaign's target precision
    ],
)
def test_an_unsure_category_leaf_backs_off_to_the_deepest_confident_node(
    shoes, tmp_path, thresholds, campaign_precision
):
    from catalog.attribute_schema import category_value

    campaign, products, embedding = shoes
    Campaign.objects.filter(pk=campaign.pk).update(auto_accept_precision=campaign_precision)
    campaign.refresh_from_db()
    values = [category_value(SANDAL), category_value(SNEAKER), category_value(DRESS)]
    distributions = [
        [0.55, 0.42, 0.03],  # a sandal? Unsure; a shoe at 0.97: back off to "Shoes"
        [0.02, 0.96, 0.02],  # a sneaker at 0.96: the leaf stands
        [0.40, 0.30, 0.30],  # nothing reaches 0.9, not even "Shoes" (0.7): the most probable root
    ]
    path = tmp_path / "tagger.pt"
    sha256 = _handmade_model(path, distributions, values=values, thresholds=thresholds)
    version = ModelVersion.objects.create(
        name="handmade",
        kind=ModelVersion.Kind.TAGGING,
        status=ModelVersion.Status.ACTIVE,
        scope="campaign:shoes",
        backbone="none",
        image_size_px=32,
        embedding_dim=8,
        weights_path=str(path),
        checkpoint_sha256=sha256,
        config={"embedding_version": str(embedding.uuid), "text_encoder": "none"},
    )
    counts = learning.predictions_apply(campaign=campaign)
    assert counts["tasks"] == 3 and counts["backed_off"] == 2
    stored = {
        p.product_id: p for p in AttributePrediction.objects.filter(model_version=version, attribute__slug="category")
    }
    unsure, sure, lost = (stored[p.pk] for p in products)
    # The leaf is kept as the prediction; the back-off rides beside it.
    assert unsure.value == values[0] and unsure.confidence == pytest.approx(0.55, abs=1e-4)
    assert unsure.backoff_path == "Shoes" and unsure.backoff_confidence == pytest.approx(0.97, abs=1e-4)
    assert sure.value == values[1] and sure.backoff_path == "" and sure.backoff_confidence is None
    assert lost.value == values[0] and lost.backoff_path == "Shoes"
    assert lost.backoff_confidence == pytest.approx(0.70, abs=1e-4)
    # Only a model threshold auto-accepts (the campaign's target is not a fitted threshold).
    accepted = AttributeLabel.objects.filter(model_version=version)
    if thresholds:
        assert list(accepted.values_list("task__product_id", "label")) == [(products[1].pk, values[1])]
    else:
        assert not accepted.exists()
    # Applying again is idempotent: the same rows, the same back-offs.
    learning.predictions_apply(campaign=campaign)
    again = AttributePrediction.objects.filter(model_version=version).order_by("product_id")
    assert [(p.backoff_path, p.value) for p in again] == [("Shoes", values[0]), ("", values[1]), ("Shoes", values[0])]


def test_category_backoff_keeps_a_confident_leaf_and_a_top_level_leaf():
    leaves = ["Shoes › Sandal", "Shoes › Sneaker", "Bags"]
    assert learning.category_backoff(np.array([0.95, 0.03, 0.02]), leaves, threshold=0.9) == ("", None)
    path, p = learning.category_backoff(np.array([0.5, 0.45, 0.05]), leaves, threshold=0.9)
    assert path == "Shoes" and p == pytest.approx(0.95)
    # A leaf at the top of the taxonomy has nowhere to go: it stands, even unsure.
    assert learning.category_backoff(np.array([0.2, 0.2, 0.6]), leaves, threshold=0.9) == ("", None)
    # The sure node need not hold the most probable leaf.
    path, p = learning.category_backoff(np.array([0.4, 0.3, 0.3]), ["A › x", "B › y", "B › z"], threshold=0.55)
    assert (path, p) == ("B", pytest.approx(0.6))
    with pytest.raises(ValueError):
        learning.category_backoff(np.array([0.95, 0.05]), leaves, threshold=0.9)  # even a sure leaf


def test_the_models_page_counts_the_open_category_predictions_that_backed_off(client, as_role, shoes):
    from catalog.attribute_schema import category_value

    campaign, products, _ = shoes
    category = campaign.attributes.get(slug="category")
    active = ModelVersionFactory(name="tagger-v2", kind="tagging", scope="campaign:shoes", status="active")
    retired = ModelVersionFactory(name="tagger-v1", kind="tagging", scope="campaign:shoes", status="retired")
    done = ProductFactory(master_category=TaxonomyNode.objects.get(path=SANDAL), image=False)
    tagging.tag_tasks_build(campaign=campaign, products=[done])
    Task.objects.filter(product=done).update(status=Task.Status.COMPLETE)
    sandal = category_value(SANDAL)
    rows = [
        (active, products[0], "Shoes", 0.97),
        (active, products[1], "", None),
        (active, products[2], "Clothing › Dresses", 0.93),
        (active, done, "Shoes", 0.95),  # not open: people or the model settled it
        (retired, products[1], "Shoes", 0.91),  # not the active model's
    ]
    for version, product, path, confidence in rows:
        AttributePrediction.objects.create(
            product=product,
            attribute=category,
            model_version=version,
            value=sandal,
            confidence=0.5,
            backoff_path=path,
            backoff_confidence=confidence,
        )
    report = learning.learning_report(campaign=campaign)["category_backoff"]
    assert report == {
        "open": 3,
        "backed_off": 2,
        "share": pytest.approx(2 / 3),
        "by_depth": [(0, 1), (1, 1)],
        "nodes": [("Clothing › Dresses", 1), ("Shoes", 1)],
    }
    as_role("ml")
    body = client.get("/learning/").content.decode()
    line = body.split('id="category-backoff-shoes"')[1].split("</p>")[0]
    assert "<b>2</b> of 3 open predictions" in line and "(67%)" in line and "top level: 1 · depth 1: 1" in line
    # No active model: nothing to count, and no line.
    ModelVersion.objects.filter(pk=active.pk).update(status="retired")
    assert learning.learning_report(campaign=campaign)["category_backoff"]["open"] == 0
    assert 'id="category-backoff-shoes"' not in client.get("/learning/").content.decode()


# -- multi choice (season) by binary relevance -------------------------------------------------------------


@pytest.fixture
def season_loop(db):
    return _loop_build(["color", "season"])


def _model_copy(active, tmp_path, name: str, thresholds: dict):
    """A ModelVersion with `active`'s weights and some thresholds replaced (not activated)."""
    from mlcore import training

    model = training.TaggingModel.load(active.weights_path)
    model.thresholds.update(thresholds)
    path = tmp_path / f"{name}.pt"
    return ModelVersion.objects.create(
        name=name,
        kind="tagging",
        status="retired",
        scope="campaign:tagging",
        backbone=active.backbone,
        image_size_px=active.image_size_px,
        embedding_dim=active.embedding_dim,
        weights_path=str(path),
        checkpoint_sha256=model.save(path),
        config=active.config,
    )


def test_a_multi_choice_attribute_is_learned_predicted_and_auto_accepted_as_a_whole(
    client, as_role, season_loop, tmp_path, django_capture_on_commit_callbacks
):
    from annotate.tag_views import _fields, _suggestions
    from catalog.models import Attribute
    from mlcore import training

    campaign, products, colours = season_loop
    season = Attribute.objects.get(slug="season")
    with django_capture_on_commit_callbacks(execute=True):
        # 60 epochs: at CONFIG's 20 the four option heads were sometimes still near 0.5, and one
        # wrong set on a 3-9 product test split failed the 0.8 below about one run in four.
        run = learning.retrain_start(campaign=campaign, config={**CONFIG, "epochs": 60})
    run.refresh_from_db()
    assert run.config["multi_choice"] == ["season"]
    # The snapshot carries the consensus's multi-choice label: options in order, P(selected) each.
    snapshot = ExportSnapshot.objects.get(uuid=run.snapshot_uuid)
    records = [json.loads(line) for line in (snapshot_folder(snapshot) / "items.jsonl").read_text().splitlines()]
    labels = {r["labels"]["season"]["label"] for r in records}
    assert labels == {"spring|summer", "autumn|winter", ""}  # "" (no season) is a label too
    summer = next(r["labels"]["season"] for r in records if r["labels"]["season"]["label"] == "spring|summer")
    assert summer["kind"] == "multi" and summer["posterior"] == {
        "spring": 0.75,
        "summer": 0.75,
        "autumn": 0.25,
        "winter": 0.25,
    }
    assert "kind" not in records[0]["labels"]["color"]  # single choice unchanged
    # Learned: the season follows the cluster on the test split and on the 30 open products.
    active = ModelVersion.objects.get(scope="campaign:tagging", status=ModelVersion.Status.ACTIVE)
    assert active.metrics["attributes"]["season"]["kind"] == "multi"
    assert active.metrics["attributes"]["season"]["accuracy"] >= 0.8
    truth = {p.pk: SEASON_OF[c] for p, c in zip(products, colours, strict=True)}
    open_products = [p.pk for p in products[60:]]
    predicted = dict(
        AttributePrediction.objects.filter(
            model_version=active, attribute=season, product_id__in=open_products
        ).values_list("product_id", "value")
    )
    assert len(predicted) == 30 and sum(truth[p] == v for p, v in predicted.items()) >= 27
    # The ML page shows the set and its options by name.
    as_role("ml")
    body = client.get("/learning/").content.decode()
    assert "(the whole set)" in body and "season ›</span> summer" in body
    # The tagging form pre-checks the predicted options.
    product = products[60]
    suggestions, backoffs = _suggestions(product=product, attributes=[season])
    value, _ = suggestions["season"]
    assert backoffs == {}
    assert value == predicted[product.pk]
    field = _fields(attributes=[season], suggestions={"season": (value, 0.9)}, posted=None, errors={})[0]
    assert {o["value"] for o in field["options"] if o["checked"]} == set(value.split("|")) - {""}

    # Auto-accept rule, on copies of the model with chosen thresholds, over the reopened tasks.
    options = ["spring", "summer", "autumn", "winter"]

    def apply(name, thresholds: dict):
        learning.model_labels_withdraw(campaign=campaign, version=active)
        AttributeLabel.objects.filter(model_version__isnull=False).delete()
        Task.objects.filter(product_id__in=open_products).update(status=Task.Status.OPEN, completed_at=None)
        version = _model_copy(active, tmp_path, name, thresholds)
        learning.predictions_apply(campaign=campaign, version=version)
        tasks = Task.objects.filter(campaign=campaign, product_id__in=open_products)
        audit = {t.pk for t in tasks if learning._audit_pick(t.uuid, version.uuid, campaign.audit_share)}
        accepted = {
            label.task_id: label for label in AttributeLabel.objects.filter(model_version=version, attribute=season)
        }
        confidences = {
            t.pk: AttributePrediction.objects.get(model_version=version, product=t.product, attribute=season)
            for t in tasks
        }
        return version, audit, accepted, confidences, tasks

    # Every option's threshold 0.5 (every decision clears it): every task but the audit sample.
    version, audit, accepted, predictions, tasks = apply("all-clear", {f"season:{o}": 0.5 for o in options})
    assert audit and set(accepted) == {t.pk for t in tasks} - audit
    for task_id, label in accepted.items():
        # Stored as consensus stores it: the option set, P(selected) per option, the least sure option.
        assert label.label == predictions[task_id].value and set(label.posterior) == set(options)
        assert label.label == "|".join(o for o in options if label.posterior[o] > 0.5)
        assert label.confidence == pytest.approx(predictions[task_id].confidence)
        assert label.confidence == pytest.approx(min(max(p, 1 - p) for p in label.posterior.values()), abs=1e-5)
        assert label.is_settled and label.answer_count == 0
    # One option without a threshold: no season is settled by the model, the colour still is.
    version, audit, accepted, *_ = apply(
        "winter-unsure", {**{f"season:{o}": 0.5 for o in options}, "season:winter": None, "color": 0.0}
    )
    assert accepted == {} and AttributeLabel.objects.filter(model_version=version, attribute__slug="color").exists()
    # One option's threshold between the products' confidences: only those clearing it are settled.
    model = training.TaggingModel.load(active.weights_path)
    ranked = sorted(max(p, 1 - p) for p in _p_yes(model, products[60:], "summer"))
    cut = (ranked[14] + ranked[15]) / 2  # half the products clear it, none sits on it
    version, audit, accepted, predictions, tasks = apply(
        "summer-strict", {**{f"season:{o}": 0.5 for o in options}, "season:summer": cut}
    )
    summer_conf = dict(zip([p.pk for p in products[60:]], _p_yes(model, products[60:], "summer"), strict=True))
    expected = {t.pk for t in tasks if max(summer_conf[t.product_id], 1 - summer_conf[t.product_id]) >= cut} - audit
    assert accepted and set(accepted) == expected and len(expected) < 30 - len(audit)
    # Labels the model settled complete their tasks only with the colour settled too.
    for task in Task.objects.filter(pk__in=list(accepted)):
        colour = AttributeLabel.objects.filter(task=task, attribute__slug="color", is_settled=True).exists()
        assert (task.status == Task.Status.COMPLETE) == colour


def _p_yes(model, products, option: str) -> list[float]:
    """The model's P(option selected) for each product (image model only, as CONFIG trains)."""
    from mlcore import training

    embedding = ModelVersion.objects.get(name="synthetic-8d")
    image, text = training.product_features([p.pk for p in products], embedding_version=embedding, text_encoder="none")
    return [float(row[1]) for row in model.predict(image, text)[f"season:{option}"]]


def test_metric_rows_put_each_option_after_its_attribute_whatever_the_stored_order():
    option = {"attribute": "season", "option": "summer"}
    stored = {  # as PostgreSQL's jsonb returns keys: shortest first
        "color": {"accuracy": 0.9},
        "season": {"kind": "multi"},
        "persona_x": {"accuracy": 0.5},
        "season:winter": {"attribute": "season", "option": "winter"},
        "season:summer": option,
    }
    rows = learning.metric_rows({"attributes": stored})
    assert [slug for slug, _ in rows] == ["color", "season", "season:summer", "season:winter", "persona_x"]
    assert rows[2][0] == "season:summer" and rows[2][1].items() >= option.items() and learning.metric_rows({}) == []


def test_retrain_now_without_a_settled_label_is_refused_with_a_message(client, db):
    # Issue 16, bug 15: it used to make a run that failed on the worker with a traceback.
    from annotate.models import Campaign
    from mlcore.models import TrainingRun

    from ..factories import CampaignFactory, user_with_role

    campaign = CampaignFactory(slug="empty-tagging", kind=Campaign.Kind.ATTRIBUTES)
    client.force_login(user_with_role("ml", username="mia"))
    response = client.post(f"/learning/{campaign.slug}/retrain", follow=True)
    assert response.status_code == 200
    assert any("no settled labels" in str(m) for m in response.context["messages"])
    assert not TrainingRun.objects.exists()
