"""Outages answered cleanly (issue 14, item 4): the database or the broker down, or a SQLite write
lock held too long, answers 503 with Retry-After (JSON on the API, a plain page elsewhere) and no
error text; /healthz names each dependency's state."""

import sqlite3
import threading

import pytest
from django.db import OperationalError, connection
from django.db.backends import utils as db_utils
from rest_framework.test import APIClient

from .factories import CampaignFactory, task_with_candidates, user_with_role
from .test_worker import broker_down  # noqa: F401 (the fixture)

SECRET = "could not connect to server at db-secret-host.internal:5432"


@pytest.fixture
def database_down(db):
    """Call it, and from then on every query of this process raises OperationalError (as a dead
    server would); undone before the test database is torn down."""
    patch = pytest.MonkeyPatch()

    def down(*args, **kwargs):
        raise OperationalError(SECRET)

    def start():
        patch.setattr(db_utils.CursorWrapper, "execute", down)
        patch.setattr(db_utils.CursorWrapper, "executemany", down)

    yield start
    patch.undo()


def test_the_api_answers_a_database_outage_with_json_503_and_retry_after(database_down, db):
    """Before: the OperationalError propagated (an HTML 500 with the error in the server's page)."""
    campaign = CampaignFactory(slug="down")
    api = APIClient()
    api.force_authenticate(user_with_role("employee"))  # no query needed to authenticate
    database_down()
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/next-task")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("application/json")
    assert int(response["Retry-After"]) > 0
    assert response.json()["code"] == "database_unavailable"
    assert "secret" not in response.content.decode()


def test_an_html_page_answers_a_database_outage_with_a_plain_503_page(client, database_down, db):
    client.force_login(user_with_role("ml"))
    database_down()
    response = client.get("/exports/")
    assert response.status_code == 503 and int(response["Retry-After"]) > 0
    body = response.content.decode()
    assert response["Content-Type"].startswith("text/html") and "briefly unavailable" in body
    assert "secret" not in body and "Traceback" not in body and "OperationalError" not in body


def test_a_broker_outage_outside_a_saved_row_answers_json_503(db, broker_down, monkeypatch):  # noqa: F811
    """A view that publishes directly (none should; this is the safety net) still answers 503 JSON."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    from annotate import api as annotate_api

    def publish(*args, **kwargs):
        raise KombuOperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(annotate_api.selectors, "snapshots_for_user", publish)
    client = APIClient()
    client.force_authenticate(user_with_role("ml"))
    response = client.get("/api/v1/exports")
    assert response.status_code == 503 and response.json()["code"] == "broker_unavailable"
    assert "127.0.0.1" not in response.content.decode() and int(response["Retry-After"]) > 0


def test_healthz_names_each_dependency_and_is_ok_when_all_are(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok", "storage": "ok"}


def test_healthz_reports_a_database_outage_as_503_without_its_error_text(client, database_down, db):
    """Before: anonymous callers were shown the database error text."""
    database_down()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "error" and response.json()["database"] == "unavailable"
    assert "secret" not in response.content.decode()


def test_healthz_reports_a_dead_broker_as_degraded(client, db, broker_down):  # noqa: F811
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "degraded", "database": "ok", "broker": "unavailable", "storage": "ok"}


def _hold_sqlite_write_lock():
    """Another connection takes the database's write lock, as a stuck writer would."""
    holder = sqlite3.connect(connection.settings_dict["NAME"], check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder



@pytest.mark.django_db(transaction=True)
def test_healthz_reports_a_locked_sqlite_database_as_503(client):
    """Before: /healthz said ok while every write waited 30 s for the lock and then failed."""
    if connection.vendor != "sqlite":
        pytest.skip("a SQLite write lock")
    holder = _hold_sqlite_write_lock()
    try:
        response = client.get("/healthz")
    finally:
        holder.rollback()
        holder.close()
    assert response.status_code == 503
    assert response.json()["database"] == "locked" and "database is locked" not in response.content.decode()
    assert client.get("/healthz").status_code == 200  # the lock is gone


@pytest.mark.django_db(transaction=True)
def test_a_write_behind_a_held_sqlite_lock_answers_503_after_a_bounded_wait():
    """Before: the request waited for the 30 s busy timeout, then answered an HTML 500."""
    if connection.vendor != "sqlite":
        pytest.skip("a SQLite write lock")
    campaign = CampaignFactory(slug="locked", gold_first_count=0, gold_rate=0)
    task = task_with_candidates(campaign)
    api = APIClient()
    api.force_authenticate(user_with_role("employee"))
    connection.ensure_connection()
    busy_ms = connection.connection.execute("PRAGMA busy_timeout").fetchone()[0]
    assert 0 < busy_ms <= 5000  # the wait for the lock is bounded well below 30 s
    holder = _hold_sqlite_write_lock()
    released = threading.Timer(30, holder.interrupt)  # never hang the suite, whatever happens
    released.start()
    try:
        response = api.post(
            f"/api/v1/tasks/{task.uuid}/answers",
            {"choice": "unfit", "duration_ms": 1500, "idempotency_key": "locked-1"},
            format="json",
        )
    finally:
        released.cancel()
        holder.rollback()
        holder.close()
    assert response.status_code == 503 and response.json()["code"] == "database_unavailable"
    assert int(response["Retry-After"]) > 0
    assert not task.answers.exists()  # nothing half-written
