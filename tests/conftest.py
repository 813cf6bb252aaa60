"""Shared fixtures. Celery runs eagerly here (tests only); tests/test_worker.py turns that off and
uses a real worker process."""

import os
import random

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from annotate import services as annotate_services
from config.celery import app as celery_app

from .factories import user_with_role

# config.settings picks FITCHECK_ENV=test under pytest by itself (local keys in var/); the worker
# processes some tests start inherit it from here.
os.environ.setdefault("FITCHECK_ENV", "test")


@pytest.fixture(autouse=True)
def _gold_draws_reproducible(monkeypatch):
    """Gold draws come from the operating system's randomness in the product; here from a seeded
    generator, so every run of a test routes the same way."""
    monkeypatch.setattr(annotate_services, "_gold_rng", random.Random(20261202))


@pytest.fixture(autouse=True)
def _test_settings(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FITCHECK_EXPORTS_ROOT = tmp_path / "exports"
    settings.FITCHECK_MODELS_ROOT = tmp_path / "models"
    settings.FITCHECK_CACHE_DIR = tmp_path / "cache"
    settings.FITCHECK_IMPORT_ROOTS = [tmp_path]  # manifests and their images live in tmp_path
    settings.FITCHECK_DEVICE = "cpu"
    settings.FITCHECK_MATCH_PRETRAIN = False  # tests that want the matching CNN trained turn it on
    settings.FITCHECK_MATCH_LOCALISER_CONFIG = {"views": 48, "sets": 1, "echo": 2, "width": 8}  # seconds, not minutes
    settings.FITCHECK_MATCH_MATTE_CONFIG = {"views": 32, "sets": 1, "echo": 1, "width": 8}
    settings.FITCHECK_MATCH_PAIR_CONFIG = {"views": 16, "shortlist": 4, "epochs": 1, "batch_size": 8, "width": 8}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()  # the API throttle counts live in the cache: every test starts with none
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager = False


@pytest.fixture
def employee(db):
    return user_with_role("employee", username="emma")


@pytest.fixture
def employee2(db):
    return user_with_role("employee", username="eli")


@pytest.fixture
def employee3(db):
    return user_with_role("employee", username="eva")


@pytest.fixture
def api():
    return APIClient()


ROLE_MATRIX = ["anonymous", "employee", "tagger", "ml", "admin"]


@pytest.fixture
def as_role(db, client):
    """Log the test client in with a fresh user of the given role ("anonymous" logs nobody in)."""

    def login(role: str):
        if role == "anonymous":
            client.logout()
            return None
        user = user_with_role(role, username=f"{role}-user")
        client.force_login(user)
        return user

    return login
