"""A web process serves the ML pages without loading the ML stack (issue 16: the first /learning/
view took 48 s and the first agreement report 37 s in each gunicorn worker, which imported torch and
statsmodels inside the request; later views took 0.13 s and 2 s).

Each page is asked for once in a fresh Python process sharing this test's database, which then
reports the heavy modules it holds. Timings are for bench/first_views.py; this checks the cause.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from annotate.models import Campaign
from mlcore.models import ModelVersion

from .factories import user_with_role
from .test_worker import _database_url

ROOT = Path(__file__).resolve().parent.parent
# What a web worker must never import to render a page: each costs seconds (torch ~10 s and ~800 MB).
HEAVY = ("torch", "torchvision", "transformers", "sentence_transformers", "crowdkit", "statsmodels", "sklearn")

CHILD = """
import json, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
client = Client()
client.force_login(get_user_model().objects.get(username=sys.argv[2]))
status = {url: client.get(url).status_code for url in sys.argv[3:]}
heavy = sorted(m for m in sys.argv[1].split(",") if m in sys.modules)
print(json.dumps({"status": status, "heavy": heavy}))
"""


def _first_views(settings, username: str, urls: list[str]) -> dict:
    env = os.environ | {
        "DATABASE_URL": _database_url(),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "FITCHECK_MODELS_ROOT": str(settings.FITCHECK_MODELS_ROOT),
        "FITCHECK_EXPORTS_ROOT": str(settings.FITCHECK_EXPORTS_ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(HEAVY), username, *urls],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)
def test_the_models_page_and_the_agreement_report_load_no_ml_library(settings):
    campaign = _tagged_campaign()
    ModelVersion.objects.create(
        name="tagging-first-view",
        kind=ModelVersion.Kind.TAGGING,
        status=ModelVersion.Status.ACTIVE,
        scope=f"campaign:{campaign.slug}",
        backbone="efficientnet_lite0",
        image_size_px=96,
        embedding_dim=1280,
        metrics={
            "attributes": {
                "color": {
                    "n": 40,
                    "accuracy": 0.9,
                    "coverage": 0.5,
                    "precision": 0.95,
                    "precision_low": 0.8,
                    "precision_high": 0.99,
                    "threshold": 0.7,
                }
            }
        },
    )
    user_with_role("ml", username="first-view-ml")
    urls = [reverse("annotate:learning"), reverse("annotate:agreement-report", args=[campaign.slug])]
    out = _first_views(settings, "first-view-ml", urls)
    assert out["status"] == {url: 200 for url in urls}
    assert out["heavy"] == []


def _tagged_campaign() -> Campaign:
    """An attributes campaign whose 4 products were tagged by 2 people: the report computes alpha
    and Fleiss' kappa over real answers."""
    from annotate import tagging
    from catalog.attribute_schema import attribute_schema_ensure
    from catalog.models import TaxonomyNode
    from catalog.services import taxonomy_path_ensure

    from .factories import CampaignFactory, ProductFactory

    taxonomy_path_ensure(path="Clothing › Dresses › Dress")
    schema = {a.slug: a for a in attribute_schema_ensure()}
    campaign = CampaignFactory(slug="first-view", kind=Campaign.Kind.ATTRIBUTES, overlap_min=2, overlap_max=2)
    campaign.attributes.set([schema["color"], schema["persona_boho"]])
    dress = TaxonomyNode.objects.get(path="Clothing › Dresses › Dress")
    products = [ProductFactory(master_category=dress, image=False) for _ in range(4)]
    tagging.tag_tasks_build(campaign=campaign, products=products)
    people = [user_with_role("tagger", username=f"first-view-{n}") for n in range(2)]
    for i, task in enumerate(campaign.tasks.select_related("campaign", "product")):
        for n, person in enumerate(people):
            values = {"color": ["red", "blue"][(i + n * (i % 2)) % 2], "persona_boho": str(3 + n)}
            tagging.tag_submit(user=person, task=task, values=values, duration_ms=5000, idempotency_key=f"f{i}{n}")
    return campaign
