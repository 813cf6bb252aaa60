"""Export pages and API: the permission matrix on every endpoint, token auth, downloads with their
sha256, progress while building, and the raw answers endpoint's cursor pagination."""

import hashlib
import json

import pytest
from django.urls import reverse
from knox.models import AuthToken

from annotate import services
from annotate.exports import services as exports
from annotate.models import Answer, ExportSnapshot

from ..conftest import ROLE_MATRIX
from ..factories import CampaignFactory, task_with_candidates, user_with_role

EXPORTERS = {"ml", "admin"}
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def campaign(db):
    """Four tasks settled by two agreeing people each (8 answers)."""
    campaign = CampaignFactory(overlap_min=2, overlap_max=2, confidence_target=0.5, gold_first_count=0, gold_rate=0)
    people = [user_with_role("employee") for _ in range(2)]
    for i in range(4):
        task = task_with_candidates(campaign)
        for person in people:
            services.answer_submit(
                user=person,
                task=task,
                choice="none",
                product_uuid=None,
                duration_ms=1500,
                idempotency_key=f"k{i}-{person.pk}",
            )
    return campaign


@pytest.fixture
def snapshot(campaign, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        snapshot = exports.export_create(name="gold", formats=["jsonl", "csv"], include_answers=True)
    snapshot.refresh_from_db()
    assert snapshot.status == ExportSnapshot.Status.DONE
    return snapshot


def _api_login(api, role):
    if role == "anonymous":
        return None
    user = user_with_role(role, username=f"api-{role}")
    api.force_authenticate(user)
    return user


def _denied(role):
    return 401 if role == "anonymous" else 403


# -- pages -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_exports_page_permission_matrix(client, as_role, snapshot, role):
    as_role(role)
    response = client.get(reverse("annotate:exports"))
    if role in EXPORTERS:
        assert response.status_code == 200
        assert b"gold v1" in response.content and b"Build export" in response.content
    elif role == "anonymous":
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    else:
        assert response.status_code == 403


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_export_create_form_permission_matrix(client, as_role, campaign, role, django_capture_on_commit_callbacks):
    as_role(role)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("annotate:exports"),
            {"name": "from-page", "formats": ["jsonl", "parquet"], "campaigns": [campaign.slug], "min_confidence": "0"},
        )
    created = ExportSnapshot.objects.filter(name="from-page").first()
    if role in EXPORTERS:
        assert response.status_code == 302 and response["Location"] == reverse(
            "annotate:export-detail", args=[created.uuid]
        )
        assert created.status == ExportSnapshot.Status.DONE and created.item_count == 4
        assert created.filters["campaigns"] == [campaign.slug]
    else:
        assert response.status_code == (302 if role == "anonymous" else 403)
        assert created is None


def test_the_export_form_explains_every_filter_in_its_section(client, as_role, campaign):
    """Issue 16: the form was Django's bare as_div, filters unexplained."""
    from django.utils.html import escape

    from annotate.forms import ExportCreateForm

    as_role("ml")
    html = client.get(reverse("annotate:exports")).content.decode()
    for title in ("Snapshot", "Which labels", "Side tables"):
        assert f"<legend>{title}</legend>" in html
    form = ExportCreateForm()
    laid_out = [name for _, _, names in form.SECTIONS for name in names]
    assert sorted(laid_out) == sorted(form.fields)  # every field placed once
    for name, field in form.fields.items():
        assert len(field.help_text) > 20, name
        block = html[html.index(f'id="field-{name}"') :].split('id="field-')[1]
        assert f'<p class="helptext" id="id_{name}_helptext">{escape(field.help_text)}</p>' in block, name


def test_export_form_shows_errors_and_creates_nothing(client, as_role, campaign):
    as_role("ml")
    response = client.post(
        reverse("annotate:exports"),
        {"name": "bad", "formats": ["jsonl"], "settled_from": "2026-02-01", "settled_to": "2026-01-01"},
    )
    assert response.status_code == 200 and b"is before settled_from" in response.content
    assert not ExportSnapshot.objects.exists()


@pytest.mark.parametrize("role", ROLE_MATRIX)
@pytest.mark.parametrize("htmx", [False, True])
def test_export_detail_permission_matrix(client, as_role, snapshot, role, htmx):
    as_role(role)
    response = client.get(reverse("annotate:export-detail", args=[snapshot.uuid]), **(HTMX if htmx else {}))
    if role in EXPORTERS:
        assert response.status_code == 200
        assert b"jsonl/items.jsonl" in response.content
        assert (b"<html" in response.content) is not htmx
    else:
        assert response.status_code == (302 if role == "anonymous" else 403)


def test_progress_partial_polls_while_building_and_stops_when_done(client, as_role, campaign):
    as_role("ml")
    pending = exports.export_create(name="slow", formats=["jsonl"])  # on_commit never runs here
    ExportSnapshot.objects.filter(pk=pending.pk).update(status="running", total_count=4, done_count=2)
    response = client.get(reverse("annotate:export-detail", args=[pending.uuid]), **HTMX)
    assert b'hx-trigger="every 1s"' in response.content and b"2 of 4 items" in response.content
    exports.export_build(snapshot_id=pending.pk)  # running with a fresh heartbeat: not taken over
    ExportSnapshot.objects.filter(pk=pending.pk).update(status="pending")
    exports.export_build(snapshot_id=pending.pk)
    response = client.get(reverse("annotate:export-detail", args=[pending.uuid]), **HTMX)
    assert b"hx-trigger" not in response.content and b"Ready: 4 items" in response.content


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_export_download_page_permission_matrix(client, as_role, snapshot, role):
    as_role(role)
    response = client.get(reverse("annotate:export-download", args=[snapshot.uuid, "csv/items.csv"]))
    if role in EXPORTERS:
        assert response.status_code == 200
        body = b"".join(response.streaming_content)
        listed = next(f for f in snapshot.files if f["path"] == "csv/items.csv")
        assert hashlib.sha256(body).hexdigest() == listed["sha256"] == response["X-Checksum-Sha256"]
        assert "gold-v1-csv-items.csv" in response["Content-Disposition"]
    else:
        assert response.status_code == (302 if role == "anonymous" else 403)


def test_download_refuses_paths_outside_the_snapshot(client, as_role, snapshot):
    as_role("ml")
    for path in ["../../etc/passwd", "jsonl/nope.jsonl", "jsonl"]:
        assert client.get(reverse("annotate:export-download", args=[snapshot.uuid, path])).status_code == 404


def test_exports_page_query_count_is_pinned(client, as_role, campaign, django_assert_num_queries):
    as_role("ml")
    for n in range(5):
        ExportSnapshot.objects.create(name="many", version=n + 1, schema_version=1, formats=["csv"])
    # session, user, roles, snapshots with creators, the form's campaign choices
    with django_assert_num_queries(5):
        assert client.get(reverse("annotate:exports")).status_code == 200


# -- API ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_api_list_permission_matrix(api, snapshot, role):
    _api_login(api, role)
    response = api.get("/api/v1/exports")
    if role in EXPORTERS:
        assert response.status_code == 200
        (only,) = response.json()["results"]
        assert only["uuid"] == str(snapshot.uuid) and only["status"] == "done"
    else:
        assert response.status_code == _denied(role)


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_api_create_permission_matrix(api, campaign, role, django_capture_on_commit_callbacks):
    _api_login(api, role)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/exports",
            {"name": "api", "formats": ["parquet"], "filters": {"campaigns": [campaign.slug]}},
            format="json",
        )
    if role in EXPORTERS:
        assert response.status_code == 202
        assert response["Location"] == f"/api/v1/exports/{response.json()['uuid']}"
        assert ExportSnapshot.objects.get(name="api").status == ExportSnapshot.Status.DONE
    else:
        assert response.status_code == _denied(role)
        assert not ExportSnapshot.objects.exists()


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_api_detail_permission_matrix(api, snapshot, role):
    _api_login(api, role)
    response = api.get(f"/api/v1/exports/{snapshot.uuid}")
    if role in EXPORTERS:
        assert response.status_code == 200
        files = {f["path"]: f for f in response.json()["files"]}
        assert files["jsonl/answers.jsonl"]["url"].endswith(
            f"/api/v1/exports/{snapshot.uuid}/files/jsonl/answers.jsonl"
        )
    else:
        assert response.status_code == _denied(role)


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_api_file_permission_matrix(api, snapshot, role):
    _api_login(api, role)
    response = api.get(f"/api/v1/exports/{snapshot.uuid}/files/jsonl/answers.jsonl")
    if role in EXPORTERS:
        assert response.status_code == 200
        rows = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
        assert len(rows) == 8 and all(r["annotator"].startswith("a-") for r in rows)
    else:
        assert response.status_code == _denied(role)


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_api_raw_answers_permission_matrix(api, campaign, role):
    _api_login(api, role)
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/answers")
    if role in EXPORTERS:
        assert response.status_code == 200
        assert len(json.loads(b"".join(response.streaming_content))["results"]) == 8
    else:
        assert response.status_code == _denied(role)


def test_token_auth_drives_an_export_end_to_end(api, campaign, django_capture_on_commit_callbacks):
    ml = user_with_role("ml", username="scientist")
    api.credentials(HTTP_AUTHORIZATION=f"Token {AuthToken.objects.create(user=ml)[1]}")
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post("/api/v1/exports", {"name": "tok", "formats": ["csv"]}, format="json").json()
    detail = api.get(f"/api/v1/exports/{created['uuid']}").json()
    assert detail["status"] == "done" and detail["progress"] == 1.0 and detail["created_by"] == "scientist"
    (items,) = [f for f in detail["files"] if f["path"] == "csv/items.csv"]
    body = b"".join(api.get(items["url"]).streaming_content)
    assert hashlib.sha256(body).hexdigest() == items["sha256"]
    assert body.count(b"\n") == 5  # header + 4 items


def test_api_create_rejects_bad_options_per_field(api, campaign):
    _api_login(api, "ml")
    response = api.post(
        "/api/v1/exports", {"name": "x", "formats": ["xlsx"], "filters": {"min_confidence": 3}}, format="json"
    )
    assert response.status_code == 400
    assert set(response.json()) == {"formats", "filters"}
    response = api.post(
        "/api/v1/exports", {"name": "x", "formats": ["csv"], "filters": {"campaigns": ["nope"]}}, format="json"
    )
    assert response.status_code == 400 and "campaigns" in response.json()
    assert not ExportSnapshot.objects.exists()


def test_raw_answers_pages_with_a_cursor_and_sees_new_answers_on_later_pages(api, campaign):
    _api_login(api, "ml")
    url, seen = f"/api/v1/campaigns/{campaign.slug}/answers?limit=3", []
    pages = 0
    while url:
        response = api.get(url)
        assert response.status_code == 200 and response["Content-Type"] == "application/json"
        page = json.loads(b"".join(response.streaming_content))
        seen += [row["answer"] for row in page["results"]]
        url, pages = page["next"], pages + 1
        if pages == 1:
            # An answer undone after the first page does not shift the following pages.
            Answer.objects.filter(uuid=seen[0]).update(revoked_at="2026-01-01T00:00:00Z")
    assert pages == 3 and len(seen) == len(set(seen)) == 8
    assert seen == [str(u) for u in Answer.objects.order_by("pk").values_list("uuid", flat=True)]


@pytest.mark.parametrize("query", ["cursor=forged", "limit=0", "limit=100000", "limit=ten"])
def test_raw_answers_rejects_a_bad_cursor_or_limit(api, campaign, query):
    _api_login(api, "ml")
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/answers?{query}")
    assert response.status_code == 400


def test_raw_answers_of_a_missing_campaign_is_404(api, db):
    _api_login(api, "ml")
    assert api.get("/api/v1/campaigns/nope/answers").status_code == 404


def test_raw_answers_of_an_attributes_campaign_carry_the_values(api, db):
    # Issue 16, bug 4: tagging answers came out as "choice": "tags", "label": "" and nothing else.
    from annotate import tagging
    from annotate.models import Campaign, Task
    from catalog.attribute_schema import attribute_schema_ensure
    from catalog.models import TaxonomyNode
    from catalog.services import taxonomy_path_ensure

    from ..factories import ProductFactory

    taxonomy_path_ensure(path="Shoes › Sandal")
    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(slug="tags", kind=Campaign.Kind.ATTRIBUTES, gold_first_count=0, gold_rate=0)
    campaign.attributes.set([schema["color"], schema["season"]])
    product = ProductFactory(master_category=TaxonomyNode.objects.get(path="Shoes › Sandal"))
    tagging.tag_tasks_build(campaign=campaign, products=[product])
    task = Task.objects.get(campaign=campaign)
    tagger = user_with_role("tagger", username="tess")
    tagging.tag_submit(
        user=tagger,
        task=task,
        values={"color": "red", "season": ["summer", "spring"]},
        duration_ms=2500,
        idempotency_key="k1",
    )
    api.force_authenticate(user_with_role("ml", username="mia"))
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/answers")
    (row,) = json.loads(b"".join(response.streaming_content))["results"]
    assert row["values"]["color"] == "red"
    assert sorted(row["values"]["season"]) == ["spring", "summer"]


@pytest.mark.parametrize("role", ROLE_MATRIX)
def test_download_all_streams_every_file_in_one_zip(client, as_role, snapshot, role):
    # Issue 16: exports had no "download all".
    import io
    import zipfile

    as_role(role)
    url = reverse("annotate:export-download-all", args=[snapshot.uuid])
    response = client.get(url)
    if role not in EXPORTERS:
        assert response.status_code == (302 if role == "anonymous" else 403)
        return
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert 'filename="gold-v1.zip"' in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert names == {f"gold-v1/{f['path']}" for f in snapshot.files}
    for f in snapshot.files:
        assert hashlib.sha256(archive.read(f"gold-v1/{f['path']}")).hexdigest() == f["sha256"]
    page = client.get(reverse("annotate:export-detail", args=[snapshot.uuid])).content.decode()
    assert url in page


def test_download_all_of_an_unfinished_export_is_404(client, as_role, campaign):
    as_role("ml")
    pending = ExportSnapshot.objects.create(name="later", version=1, schema_version=1, formats=["csv"])
    assert client.get(reverse("annotate:export-download-all", args=[pending.uuid])).status_code == 404
