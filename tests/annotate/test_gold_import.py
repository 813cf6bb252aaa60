"""`manage.py gold_import`: gold answers from a manifest, idempotent, bad rows reported."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotate.models import GoldLabel, Task

from ..factories import CampaignFactory, task_with_candidates


@pytest.fixture
def tasks(db):
    campaign = CampaignFactory()
    return [task_with_candidates(campaign) for _ in range(3)]


def _run(path):
    out, err = StringIO(), StringIO()
    try:
        call_command("gold_import", str(path), stdout=out, stderr=err)
    except CommandError as exc:
        return out.getvalue(), err.getvalue(), exc
    return out.getvalue(), err.getvalue(), None


def test_imports_marks_gold_and_is_idempotent(tmp_path, tasks):
    product = tasks[0].candidates.get(rank=2).product
    manifest = tmp_path / "gold.csv"
    manifest.write_text(
        f"task,choice,product\n{tasks[0].uuid},product,{product.uuid}\n{tasks[1].uuid},not_a_product,\n"
    )
    out, _, error = _run(manifest)
    assert error is None and "2 created, 0 updated, 0 unchanged, 0 failed" in out
    assert dict(GoldLabel.objects.values_list("task_id", "label")) == {tasks[0].pk: "2", tasks[1].pk: "not_a_product"}
    assert set(Task.objects.filter(is_gold=True).values_list("pk", flat=True)) == {tasks[0].pk, tasks[1].pk}
    assert all(g.source == "import" for g in GoldLabel.objects.all())

    out, _, error = _run(manifest)
    assert error is None and "0 created, 0 updated, 2 unchanged" in out

    manifest.write_text(f"task,choice,product\n{tasks[1].uuid},none,\n")
    out, _, _ = _run(manifest)
    assert "0 created, 1 updated" in out and GoldLabel.objects.get(task=tasks[1]).label == "none"


def test_bad_rows_are_reported_and_the_good_ones_imported(tmp_path, tasks):
    outsider = task_with_candidates(tasks[0].campaign).candidates.get(rank=1).product
    manifest = tmp_path / "gold.jsonl"
    manifest.write_text(
        "\n".join(
            [
                f'{{"task": "{tasks[0].uuid}", "choice": "unfit"}}',
                '{"task": "not-a-uuid", "choice": "none"}',
                f'{{"task": "{tasks[1].uuid}", "choice": "maybe"}}',
                f'{{"task": "{tasks[2].uuid}", "choice": "product", "product": "{outsider.uuid}"}}',
                "{broken",
                '{"choice": "none"}',
            ]
        )
    )
    out, err, error = _run(manifest)
    assert isinstance(error, CommandError) and "5 row(s) failed" in str(error)
    assert "1 created" in out
    assert "line 2: no task 'not-a-uuid'" in err
    assert "line 3: choice: must be one of" in err
    assert "line 4: product: is not one of this task's candidates" in err
    assert "line 5: not valid JSON" in err
    assert "line 6: missing value for task" in err
    assert list(GoldLabel.objects.values_list("task_id", flat=True)) == [tasks[0].pk]


def test_a_manifest_without_the_columns_writes_nothing(tmp_path, tasks):
    manifest = tmp_path / "gold.csv"
    manifest.write_text(f"task\n{tasks[0].uuid}\n")
    _, _, error = _run(manifest)
    assert isinstance(error, CommandError) and "missing required column(s): choice" in str(error)
    assert not GoldLabel.objects.exists()
