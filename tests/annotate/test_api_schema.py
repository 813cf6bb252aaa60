"""The OpenAPI schema says what the code does (issue 14 item 7): GET /exports is a cursor page, error
bodies carry a `code`, and POST /exports takes JSON only instead of dropping a multipart body's
filters without a word."""

import uuid

import pytest
from drf_spectacular.generators import SchemaGenerator

from annotate.models import ExportSnapshot

from ..factories import CampaignFactory, user_with_role

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def _resolve(schema, node):
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_the_export_list_is_documented_as_the_cursor_page_it_is(schema, api):
    documented = _resolve(schema, schema["paths"]["/api/v1/exports"]["get"]["responses"]["200"]["content"]
                          ["application/json"]["schema"])
    assert documented["type"] == "object" and set(documented["properties"]) == {"next", "previous", "results"}
    assert _resolve(schema, documented["properties"]["results"])["type"] == "array"
    names = [p["name"] for p in schema["paths"]["/api/v1/exports"]["get"]["parameters"]]
    assert "cursor" in names
    api.force_authenticate(user_with_role("ml"))
    body = api.get("/api/v1/exports").json()
    assert set(body) == {"next", "previous", "results"} and isinstance(body["results"], list)


@pytest.mark.parametrize(
    ("role", "method", "url", "status", "code"),
    [
        ("anonymous", "get", "/api/v1/exports", 401, "not_authenticated"),
        ("employee", "get", "/api/v1/exports", 403, "permission_denied"),
        ("tagger", "post", "/api/v1/exports", 403, "permission_denied"),
        ("ml", "get", f"/api/v1/exports/{uuid.UUID(int=1)}", 404, "not_found"),
        ("ml", "get", "/api/v1/exports?cursor=bogus", 404, "not_found"),
        ("tagger", "get", "/api/v1/campaigns/lunch/next-task", 403, "permission_denied"),
        ("employee", "get", "/api/v1/campaigns/nope/next-task", 404, "not_found"),
        ("ml", "get", "/api/v1/campaigns/nope/answers", 404, "not_found"),
    ],
)
def test_error_bodies_carry_a_code(api, role, method, url, status, code):
    CampaignFactory(slug="lunch")
    if role != "anonymous":
        api.force_authenticate(user_with_role(role))
    response = getattr(api, method)(url, {"name": "x", "formats": ["csv"]} if method == "post" else None,
                                    format="json" if method == "post" else None)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code and body["detail"]


def test_a_parse_error_carries_a_code(api):
    api.force_authenticate(user_with_role("ml"))
    response = api.post("/api/v1/exports", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def test_error_responses_are_documented_with_their_code(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            # The token endpoint authenticates by password: it answers 400, never 401.
            required = ("403",) if (method, path) == ("post", "/api/v1/auth/token") else ("401", "403")
            assert set(required) <= set(responses), (method, path)
            for status in required:
                body = _resolve(schema, responses[status]["content"]["application/json"]["schema"])
                assert "code" in body["properties"], (method, path, status)


def test_a_multipart_export_request_is_refused_instead_of_losing_its_filters(api):
    CampaignFactory(slug="lunch")
    api.force_authenticate(user_with_role("ml"))
    response = api.post(
        "/api/v1/exports",
        {"name": "multi", "formats": ["csv"], "filters": '{"campaigns": ["lunch"], "min_confidence": 0.9}'},
        format="multipart",
    )
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    assert not ExportSnapshot.objects.exists()


def test_the_export_request_is_documented_as_json_only(schema):
    content = schema["paths"]["/api/v1/exports"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json"}
    assert "415" in schema["paths"]["/api/v1/exports"]["post"]["responses"]


# -- what the schemathesis run (test_schema_fuzz.py) found -----------------------------------------------


def test_a_snapshot_built_by_a_command_has_no_creator_and_the_schema_allows_it(schema, api):
    ExportSnapshot.objects.create(name="cli", version=1, schema_version=1, formats=["csv"])
    api.force_authenticate(user_with_role("ml"))
    assert api.get("/api/v1/exports").json()["results"][0]["created_by"] is None
    assert schema["components"]["schemas"]["ExportSnapshot"]["properties"]["created_by"]["nullable"] is True


def test_formats_are_documented_as_a_non_empty_list_without_repeats(schema, api):
    formats = schema["components"]["schemas"]["ExportCreate"]["properties"]["formats"]
    assert (formats["minItems"], formats["uniqueItems"]) == (1, True)
    api.force_authenticate(user_with_role("ml"))
    assert api.post("/api/v1/exports", {"name": "x", "formats": []}, format="json").status_code == 400


def test_the_raw_answers_limit_is_documented_with_its_bounds(schema):
    (limit,) = [p for p in schema["paths"]["/api/v1/campaigns/{slug}/answers"]["get"]["parameters"]
                if p["name"] == "limit"]
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 10_000)


def test_an_api_path_that_matches_no_url_is_a_json_404_with_a_code(api, client):
    api.force_authenticate(user_with_role("ml"))
    response = api.get("/api/v1/campaigns/has%20space/answers")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json() == {"code": "not_found", "detail": "Not found."}
    page = client.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_the_two_export_gets_have_distinct_operation_ids(schema):
    ids = [op["operationId"] for ops in schema["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) and "v1_exports_list" in ids
