"""A bounded schemathesis run over the whole API for every role (issue 14 item 7): each operation of
the drf-spectacular schema gets positive and negative cases, sent through WSGI to the app and
judged by every schemathesis check (no 5xx, documented status codes, content types and headers,
bodies that match their schema, invalid input rejected, valid input accepted, ...).

Deterministic: Hypothesis is derandomized (the seed is fixed by the test's name) and keeps no
example database. About 400 cases in all, a minute or less on two cores.
"""

import hypothesis
import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st

from annotate import services
from annotate.exports import services as exports
from annotate.models import ExportSnapshot
from config.wsgi import application

from ..factories import CampaignFactory, task_with_candidates, user_with_role

ROLES = ["anonymous", "employee", "tagger", "ml", "admin"]
EXAMPLES_PER_OPERATION = 5  # per generation mode: 9 operations x 2 modes x 5 x 5 roles = 450 cases
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


# Schema-valid requests that the server may still refuse with 400, for reasons no schema can state:
# a product must be one of the task's candidates (and is required when choice is product), a
# campaign or attribute filter must exist, settled_from is "an ISO 8601 date or datetime", and a
# raw-answers cursor is signed and opaque. Every other check runs in full on these operations.
SEMANTIC_400 = [
    ("POST", "/api/v1/tasks/{uuid}/answers"),
    ("PUT", "/api/v1/tasks/{uuid}/gold"),
    ("POST", "/api/v1/exports"),
    ("GET", "/api/v1/campaigns/{slug}/answers"),
]
POSITIVE_STATUSES = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]
CONFIG = schemathesis.Config.from_dict(
    {
        "operations": [
            {
                "include-method": method,
                "include-path": path,
                "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES}},
            }
            for method, path in SEMANTIC_400
        ]
    }
)


def auth_headers(user) -> dict:
    """The headers that authenticate `user` to the API (none: anonymous). The one place that knows
    how API tokens are made, so a switch of the token scheme changes only this function."""
    if user is None:
        return {}
    from annotate.auth import token_create

    _, token = token_create(user=user)
    return {"Authorization": f"Token {token}"}


@pytest.fixture
def api_schema(db):
    """The served schema, loaded through WSGI. The real WSGI handler closes the database connection
    when a request starts and finishes (close_old_connections), which would end the test's
    transaction; Django's test client unhooks it the same way."""
    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", application, config=CONFIG)
    finally:
        for signal in (signals.request_started, signals.request_finished):
            signal.connect(close_old_connections)


@pytest.fixture
def known(db, django_capture_on_commit_callbacks):
    """Real objects for the path parameters, so that cases reach past the 404s: a campaign with an
    answered task and a finished export snapshot."""
    campaign = CampaignFactory(slug="fuzz", gold_first_count=0, gold_rate=0)
    task = task_with_candidates(campaign)
    services.answer_submit(
        user=user_with_role("employee", username="fuzz-answerer"), task=task, choice="none",
        product_uuid=None, duration_ms=1500, idempotency_key="fuzz-1",
    )
    with django_capture_on_commit_callbacks(execute=True):
        snapshot = exports.export_create(name="fuzz", formats=["jsonl"])
    snapshot.refresh_from_db()
    assert snapshot.status == ExportSnapshot.Status.DONE
    return {"slug": campaign.slug, "task_uuid": str(task.uuid), "snapshot_uuid": str(snapshot.uuid)}


def _known_parameters(operation, known: dict) -> dict:
    """Path parameters of `operation` set to real objects: uuid is a task or a snapshot by path."""
    names = {p.name for p in operation.path_parameters}
    chosen = {}
    if "slug" in names:
        chosen["slug"] = known["slug"]
    if "uuid" in names:
        chosen["uuid"] = known["snapshot_uuid"] if "/exports/" in operation.path else known["task_uuid"]
    if "path" in names:
        chosen["path"] = "jsonl/items.jsonl"
    return chosen


@pytest.mark.parametrize("role", ROLES)
def test_the_api_matches_its_schema_for_every_role(api_schema, known, role):
    user = None if role == "anonymous" else user_with_role(role, username=f"fuzz-{role}")
    headers = auth_headers(user)
    failures = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        fixed = _known_parameters(operation, known)
        strategies = []
        for mode in MODES:
            strategies.append(operation.as_strategy(generation_mode=mode))
            if fixed and mode is schemathesis.GenerationMode.POSITIVE:
                strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=fixed))

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION * len(strategies),
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=st.one_of(strategies))
        def run(case):
            case.call_and_validate(headers=headers)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation runs; all failures are reported
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
