"""Gold-dataset exports: records and filters, every format, reruns byte-identical, the Celery task
(idempotent), and the Label Studio round trip."""

import json
import re

import pyarrow.parquet as pq
import pytest
from django.utils import timezone

from annotate import services
from annotate.exports import records
from annotate.exports import services as exports
from annotate.exports.label_studio import label_studio_import
from annotate.models import Answer, ExportSnapshot, GoldLabel, Task
from annotate.tasks import export_build_task

from ..factories import CampaignFactory, ModelVersionFactory, task_with_candidates, user_with_role

ALL_FORMATS = [f.value for f in ExportSnapshot.Format]
_keys = iter(range(10**9))


def _answer(user, task, pick, duration_ms=1500):
    choice, product = (pick, None)
    if pick.isdigit():
        choice, product = "product", task.candidates.get(rank=int(pick)).product.uuid
    return services.answer_submit(
        user=user,
        task=task,
        choice=choice,
        product_uuid=product,
        duration_ms=duration_ms,
        idempotency_key=f"x{next(_keys)}",
    )[0]


@pytest.fixture
def crowd(db):
    """A campaign with: two tasks settled by agreeing people ("1" and "none"), one contested task
    (3 answers, no agreement, cap 3), one open task, one gold task, one model-settled task."""
    campaign = CampaignFactory(
        slug="spring", overlap_min=2, overlap_max=3, confidence_target=0.9, gold_first_count=0, gold_rate=0
    )
    people = [user_with_role("employee") for _ in range(3)]
    settled_1, settled_none, contested, open_task, gold, model = (task_with_candidates(campaign) for _ in range(6))
    for person in people[:2]:
        _answer(person, settled_1, "1")
        _answer(person, settled_none, "none")
    for person, pick in zip(people, ["1", "2", "none"], strict=True):
        _answer(person, contested, pick)
    _answer(people[0], open_task, "2")
    services.gold_set(task=gold, label="3", source=GoldLabel.Source.MANUAL)
    _answer(people[0], gold, "3")
    Task.objects.filter(pk=model.pk).update(
        status=Task.Status.COMPLETE,
        label="2",
        confidence=0.99,
        posterior={"2": 0.99, "1": 0.01},
        completed_at=timezone.now(),
        label_model_version=ModelVersionFactory(),
    )
    return campaign, {
        "settled_1": settled_1,
        "settled_none": settled_none,
        "contested": contested,
        "open": open_task,
        "gold": gold,
        "model": model,
    }


@pytest.fixture
def build(django_capture_on_commit_callbacks):
    """Create a snapshot and run its (eager) Celery build as the commit would."""

    def run(formats, filters=None, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            snapshot = exports.export_create(name="gold", formats=formats, filters=filters, **kwargs)
        snapshot.refresh_from_db()
        assert snapshot.status == ExportSnapshot.Status.DONE, snapshot.error
        return snapshot

    return run


def _items(snapshot):
    path = exports.export_file_path(snapshot=snapshot, path="jsonl/items.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestRecords:
    def test_only_settled_items_with_label_provenance_and_agreement(self, build, crowd):
        campaign, tasks = crowd
        snapshot = build(["jsonl"])
        by_task = {r["task"]: r for r in _items(snapshot)}
        assert set(by_task) == {str(tasks[k].uuid) for k in ("settled_1", "settled_none", "contested", "gold", "model")}
        first = by_task[str(tasks["settled_1"].uuid)]["labels"]["match"]
        product = tasks["settled_1"].candidates.get(rank=1).product
        assert first["label"] == "1" and first["product"] == str(product.uuid) and first["sku"] == product.sku
        assert first["provenance"] == "human" and first["answer_count"] == 2 and first["agreement"] == 1.0
        assert first["is_contested"] is False and abs(sum(first["posterior"].values()) - 1) < 1e-4
        # Posterior keys in the campaign's label order (PostgreSQL's jsonb would sort them otherwise),
        # timestamps in UTC with 6 fraction digits: the same text from either database.
        assert list(first["posterior"]) == [k for k in campaign.labels() if k in first["posterior"]]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["settled_at"])
        contested = by_task[str(tasks["contested"].uuid)]["labels"]["match"]
        assert contested["is_contested"] is True and contested["agreement"] == pytest.approx(1 / 3, abs=1e-6)
        gold = by_task[str(tasks["gold"].uuid)]["labels"]["match"]
        assert gold["provenance"] == "gold" and gold["label"] == "3" and gold["confidence"] == 1.0
        model = by_task[str(tasks["model"].uuid)]["labels"]["match"]
        assert model["provenance"] == "model" and model["model_version"] == "tiny_cnn-32px-test"
        record = by_task[str(tasks["settled_none"].uuid)]
        assert record["split"] in ("train", "validation", "test")
        assert record["split"] == records.split_of(record["photo"])
        assert record["image_url"].endswith("/media/" + record["image_path"])
        assert [c["rank"] for c in record["candidates"]] == [1, 2, 3] and record["suggestions_withheld_by"] is None
        assert snapshot.schema_version == records.SCHEMA_VERSION == 2
        assert (snapshot.item_count, snapshot.answer_count, snapshot.total_count) == (5, 0, 5)

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({"provenance": ["gold"]}, {"gold"}),
            ({"provenance": ["model", "human"]}, {"settled_1", "settled_none", "contested", "model"}),
            ({"exclude_contested": True}, {"settled_1", "settled_none", "gold", "model"}),
            ({"min_confidence": 0.95}, {"gold", "model", "settled_1", "settled_none"}),
            (
                {"campaigns": ["spring"], "attributes": ["match"]},
                {"settled_1", "settled_none", "contested", "gold", "model"},
            ),
            ({"settled_from": "2000-01-01", "settled_to": "2001-01-01"}, set()),
        ],
    )
    def test_filters(self, build, crowd, filters, expected):
        _, tasks = crowd
        if "min_confidence" in filters:
            # Consensus confidence of the agreeing pairs depends on the pooled prior; pin it.
            Task.objects.filter(pk__in=[tasks["settled_1"].pk, tasks["settled_none"].pk]).update(confidence=0.96)
        snapshot = build(["jsonl"], filters)
        assert {r["task"] for r in _items(snapshot)} == {str(tasks[k].uuid) for k in expected}
        assert snapshot.filters == records.ExportFilters.parse(filters).as_json()


class TestBuildTask:
    def test_the_task_is_idempotent_and_a_failure_is_recorded(self, crowd, settings, tmp_path):
        snapshot = ExportSnapshot.objects.create(name="direct", version=1, schema_version=1, formats=["csv"])
        export_build_task(snapshot.pk)
        snapshot.refresh_from_db()
        assert snapshot.status == ExportSnapshot.Status.DONE and snapshot.progress == 1.0
        files = list(snapshot.files)
        export_build_task(snapshot.pk)  # already done: nothing rewritten
        snapshot.refresh_from_db()
        assert snapshot.files == files
        export_build_task(10**9)  # a missing snapshot is logged and skipped
        (tmp_path / "blocked").write_text("a file where the exports folder should be")
        settings.FITCHECK_EXPORTS_ROOT = tmp_path / "blocked"
        failing = ExportSnapshot.objects.create(name="direct", version=2, schema_version=1, formats=["csv"])
        export_build_task(failing.pk)
        failing.refresh_from_db()
        assert failing.status == ExportSnapshot.Status.FAILED and "blocked" in failing.error

    def test_a_stale_running_build_is_taken_over_and_a_live_one_is_not(self, crowd):
        from datetime import timedelta

        snapshot = ExportSnapshot.objects.create(
            name="direct",
            version=1,
            schema_version=1,
            formats=["jsonl"],
            status=ExportSnapshot.Status.RUNNING,
            heartbeat_at=timezone.now(),
        )
        assert exports.export_build(snapshot_id=snapshot.pk) is None
        ExportSnapshot.objects.filter(pk=snapshot.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        assert exports.export_build(snapshot_id=snapshot.pk).status == ExportSnapshot.Status.DONE


class TestCreate:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"name": "has space", "formats": ["csv"]}, "name"),
            ({"name": "ok", "formats": []}, "formats"),
            ({"name": "ok", "formats": ["xlsx"]}, "formats"),
            ({"name": "ok", "formats": ["csv", "csv"]}, "formats"),
            ({"name": "ok", "formats": ["csv"], "filters": {"min_confidence": 2}}, "min_confidence"),
            ({"name": "ok", "formats": ["csv"], "filters": {"provenance": ["robot"]}}, "provenance"),
            ({"name": "ok", "formats": ["csv"], "filters": {"campaigns": ["nope"]}}, "campaigns"),
            ({"name": "ok", "formats": ["csv"], "filters": {"settled_from": "yesterday"}}, "settled_from"),
            (
                {
                    "name": "ok",
                    "formats": ["csv"],
                    "filters": {"settled_from": "2026-02-01", "settled_to": "2026-01-01"},
                },
                "settled_to",
            ),
            ({"name": "ok", "formats": ["csv"], "filters": {"colour": "red"}}, "colour"),
        ],
    )
    def test_bad_options_are_refused_per_field_and_nothing_is_created(self, db, kwargs, field):
        with pytest.raises(records.ExportInvalid) as caught:
            exports.export_create(**kwargs)
        assert field in caught.value.errors
        assert not ExportSnapshot.objects.exists()

    def test_versions_count_per_name(self, db):
        names = [exports.export_create(name=n, formats=["csv"]) for n in ("a", "b", "a", "a")]
        assert [(s.name, s.version) for s in names] == [("a", 1), ("b", 1), ("a", 2), ("a", 3)]


class TestFormats:
    def test_every_format_and_a_rerun_is_byte_identical(self, build, crowd):
        first = build(ALL_FORMATS, include_answers=True, include_reliability=True)
        second = build(ALL_FORMATS, include_answers=True, include_reliability=True)
        assert second.version == first.version + 1
        assert [(f["path"], f["sha256"]) for f in first.files] == [(f["path"], f["sha256"]) for f in second.files]
        paths = {f["path"] for f in first.files}
        assert {
            "jsonl/items.jsonl",
            "jsonl/answers.jsonl",
            "jsonl/annotators.jsonl",
            "csv/items.csv",
            "parquet/items.parquet",
            "parquet/answers.parquet",
            "crowdkit/answers.csv",
            "crowdkit/gold.csv",
            "label_studio/tasks.json",
            "label_studio/config.xml",
            "hf/state.json",
        } <= paths
        assert first.answer_count == 8  # live answers of the exported tasks: 2 + 2 + 3 + 1 (gold) + 0 (model)

    def test_parquet_and_hf_folder_load(self, build, crowd):
        import datasets

        snapshot = build(["parquet", "hf", "jsonl"])
        table = pq.read_table(exports.export_file_path(snapshot=snapshot, path="parquet/items.parquet"))
        assert table.num_rows == 5
        assert table.column("labels").to_pylist()[0]["match"]["provenance"] in ("human", "gold", "model")
        folder = exports.snapshot_folder(snapshot) / "hf"
        dataset = datasets.load_from_disk(str(folder))
        assert len(dataset) == 5 and isinstance(dataset.features["image"], datasets.Image)
        assert dataset[0]["image"].size == (28, 28)
        # Without embed_images the folder names the files on this server; it holds no image bytes.
        raw = dataset.cast_column("image", datasets.Image(decode=False))[0]["image"]
        assert raw["bytes"] is None and raw["path"].startswith(str(exports.settings.MEDIA_ROOT))
        assert [r["task"] for r in _items(snapshot)] == dataset["task"]

    def test_hf_folder_with_embedded_images_loads_without_the_media_files(self, build, crowd, settings):
        import shutil

        import datasets

        snapshot = build(["hf"], embed_images=True)
        shutil.rmtree(settings.MEDIA_ROOT)
        dataset = datasets.load_from_disk(str(exports.snapshot_folder(snapshot) / "hf"))
        assert len(dataset) == 5 and all(image.size == (28, 28) for image in dataset["image"])

    def test_a_missing_image_file_fails_an_embedding_export_with_its_name(
        self, crowd, settings, django_capture_on_commit_callbacks
    ):
        _, tasks = crowd
        (settings.MEDIA_ROOT / tasks["gold"].photo.image.name).unlink()
        with django_capture_on_commit_callbacks(execute=True):
            snapshot = exports.export_create(name="gold", formats=["hf"], embed_images=True)
        snapshot.refresh_from_db()
        assert snapshot.status == ExportSnapshot.Status.FAILED
        assert tasks["gold"].photo.image.name in snapshot.error and snapshot.files == []
        assert not exports.snapshot_folder(snapshot).exists()

    def test_crowdkit_answers_run_through_crowdkit(self, build, crowd):
        import pandas as pd
        from crowdkit.aggregation import MajorityVote

        snapshot = build(["crowdkit"])
        answers = pd.read_csv(exports.export_file_path(snapshot=snapshot, path="crowdkit/answers.csv"), dtype=str)
        assert list(answers.columns) == ["worker", "task", "label"] and len(answers) == 8
        labels = MajorityVote().fit_predict(answers)
        _, tasks = crowd
        assert labels[str(tasks["settled_1"].uuid)] == "1"


class TestLabelStudioRoundTrip:
    @pytest.fixture
    def settled(self, db):
        """Twelve tasks, each answered by 3 of 4 people with varied agreement, one gold; all settled
        (cap 3), then the full recompute, as Celery beat would have run it."""
        from annotate.consensus.services import consensus_recompute

        campaign = CampaignFactory(
            slug="source", overlap_min=3, overlap_max=3, confidence_target=0.99, gold_first_count=0, gold_rate=0
        )
        people = [user_with_role("employee") for _ in range(4)]
        picks = ["1", "1", "2", "none", "1", "3", "not_a_product", "1", "2", "unfit", "none", "1"]
        for i, truth in enumerate(picks):
            task = task_with_candidates(campaign)
            if i == 0:
                services.gold_set(task=task, label=truth)
            for j, person in enumerate(people[i % 2 : i % 2 + 3]):
                _answer(person, task, truth if (i + j) % 4 else "none", duration_ms=1200 + 10 * i + j)
        consensus_recompute(campaign_id=campaign.pk)
        return campaign

    def test_export_import_export_gives_the_same_labels(self, build, settled):
        first = build(["label_studio", "jsonl"], {"campaigns": ["source"]}, include_answers=True)
        assert first.item_count == 12
        ls_file = exports.export_file_path(snapshot=first, path="label_studio/tasks.json")
        # A fresh start: the campaign, its tasks, answers and photos are gone; the image files and the
        # catalog's products stay (an import needs the products its candidates name).
        Task.objects.filter(campaign=settled).delete()
        settled.delete()
        from catalog.models import Photo

        Photo.objects.all().delete()
        target = CampaignFactory(
            slug="moved", overlap_min=3, overlap_max=3, confidence_target=0.99, gold_first_count=0, gold_rate=0
        )
        report = label_studio_import(campaign=target, path=ls_file)
        assert report.errors == []
        assert (report.task_created_count, report.answer_created_count, report.gold_count) == (12, 36, 1)
        again = label_studio_import(campaign=target, path=ls_file)
        assert (again.task_created_count, again.answer_created_count, again.answer_existing_count) == (0, 0, 36)
        second = build(["label_studio", "jsonl"], {"campaigns": ["moved"]}, include_answers=True)

        def labels(snapshot):
            return {
                r["photo_sha256"]: (r["labels"]["match"]["label"], r["labels"]["match"]["provenance"])
                for r in _items(snapshot)
            }

        assert labels(second) == labels(first)
        assert len(set(labels(first).values())) > 3  # the labels vary, so equality means something

        def answers(snapshot):
            rows = exports.export_file_path(snapshot=snapshot, path="jsonl/answers.jsonl").read_text().splitlines()
            return sorted((a["label"], a["duration_ms"], a["created_at"]) for a in map(json.loads, rows))

        assert answers(second) == answers(first)


class TestLabelStudioImportErrors:
    @pytest.fixture
    def target(self, db):
        return CampaignFactory(slug="target", gold_first_count=0, gold_rate=0)

    @pytest.fixture
    def good_task(self, db, settings):
        """A Label Studio task naming a stored photo by its media URL, with a valid annotation."""
        source = CampaignFactory(slug="elsewhere")
        task = task_with_candidates(source)
        candidates = [
            {"rank": c.rank, "sku": c.product.sku, "retailer": c.product.retailer.slug}
            for c in task.candidates.select_related("product__retailer")
        ]
        return {
            "id": 1,
            "data": {"image": settings.MEDIA_URL + task.photo.image.name, "candidates": candidates},
            "annotations": [
                {
                    "id": 1,
                    "completed_by": 7,
                    "lead_time": 2.5,
                    "result": [
                        {"from_name": "match", "to_name": "image", "type": "choices", "value": {"choices": ["2"]}}
                    ],
                }
            ],
        }

    def _write(self, tmp_path, payload):
        path = tmp_path / "ls.json"
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
        return path

    @pytest.mark.parametrize("payload", ["not json", '"a string"', "", "[1, 2"])
    def test_a_file_that_is_not_label_studio_json_imports_nothing(self, target, tmp_path, payload):
        from annotate.exports.label_studio import LabelStudioFileInvalid

        with pytest.raises(LabelStudioFileInvalid):
            label_studio_import(campaign=target, path=self._write(tmp_path, payload))
        assert not Task.objects.filter(campaign=target).exists()

    def test_bad_tasks_are_reported_by_position_and_good_ones_imported(self, target, good_task, tmp_path):
        def variant(**changes):
            task = json.loads(json.dumps(good_task))
            for key, value in changes.items():
                if key == "annotation_choice":
                    task["annotations"][0]["result"][0]["value"]["choices"] = value
                elif key == "sku":
                    task["data"]["candidates"][0]["sku"] = value
                else:
                    task["data"][key] = value
            return task

        items = [
            variant(image="/data/upload/1/missing.png"),  # no images_root to resolve it against
            variant(annotation_choice=["7"]),  # not one of the campaign's labels
            variant(annotation_choice=["1", "2"]),  # two choices for a single-choice question
            variant(sku="NOPE-1"),  # a candidate that is not in the catalog
            variant(candidates=[]),
            "not an object",
            good_task,
        ]
        report = label_studio_import(campaign=target, path=self._write(tmp_path, items))
        assert [position for position, _ in report.errors] == [1, 2, 3, 4, 5, 6]
        reasons = " | ".join(reason for _, reason in report.errors)
        for expected in ("images_root", "unknown choice '7'", "expected one choice", "NOPE-1", "candidates"):
            assert expected in reasons
        assert report.task_created_count == 1 and report.answer_created_count == 1
        answer = Answer.objects.get(task__campaign=target)
        assert (answer.label, answer.choice, answer.duration_ms, answer.annotator.username) == (
            "2",
            "product",
            2500,
            "ls-7",
        )
        assert not answer.annotator.is_active and not answer.annotator.has_usable_password()

    def test_images_resolve_under_images_root_and_never_outside_it(self, target, good_task, tmp_path, settings):
        from ..factories import png

        root = tmp_path / "ls-files"
        (root / "upload" / "3").mkdir(parents=True)
        (root / "upload" / "3" / "photo.png").write_bytes(png(seed=4242))
        inside = json.loads(json.dumps(good_task))
        inside["data"]["image"] = "/data/upload/3/photo.png"
        outside = json.loads(json.dumps(good_task))
        outside["data"]["image"] = "/data/upload/../../../etc/passwd"
        report = label_studio_import(campaign=target, path=self._write(tmp_path, [inside, outside]), images_root=root)
        assert report.task_created_count == 1
        assert [(p, "is outside FITCHECK_IMPORT_ROOTS" in r) for p, r in report.errors] == [(2, True)]

    def test_the_command_reports_counts_and_fails_on_bad_tasks(self, target, good_task, tmp_path):
        from io import StringIO

        from django.core.management import CommandError, call_command

        out = StringIO()
        call_command("label_studio_import", str(self._write(tmp_path, [good_task])), campaign="target", stdout=out)
        assert "tasks: 1 created" in out.getvalue() and "answers: 1 created" in out.getvalue()
        with pytest.raises(CommandError, match="1 task"):
            call_command(
                "label_studio_import",
                str(self._write(tmp_path, [{"data": {}}])),
                campaign="target",
                stdout=StringIO(),
                stderr=StringIO(),
            )
        with pytest.raises(CommandError, match="no campaign"):
            call_command("label_studio_import", str(tmp_path / "x.json"), campaign="nope")
