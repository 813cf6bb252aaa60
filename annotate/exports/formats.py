"""Writers of the export formats. Each takes chunks of records (exports.records) and writes files
under its own folder of the snapshot, streaming: nothing holds more than a buffer of rows.

Every writer is deterministic: the same records give byte-identical files (no timestamps, random
ids or dict-order accidents), which is what makes a rerun of a snapshot reproducible.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings

from .records import Chunk

PARQUET_ROWS = 20_000  # rows buffered per Parquet row group / Arrow batch
LABEL_FIELDS = (
    "label",
    "product",
    "sku",
    "posterior",
    "confidence",
    "answer_count",
    "agreement",
    "provenance",
    "model_version",
    "is_contested",
    "settled_at",
)


def _label_struct() -> pa.DataType:
    # Same fields, same order as LABEL_FIELDS.
    return pa.struct(
        [
            ("label", pa.string()),
            ("product", pa.string()),
            ("sku", pa.string()),
            ("posterior", pa.list_(pa.struct([("label", pa.string()), ("p", pa.float64())]))),
            ("confidence", pa.float64()),
            ("answer_count", pa.int32()),
            ("agreement", pa.float64()),
            ("provenance", pa.string()),
            ("model_version", pa.string()),
            ("is_contested", pa.bool_()),
            ("settled_at", pa.string()),
        ]
    )


def items_schema(attributes: tuple[str, ...]) -> pa.Schema:
    """Arrow schema of the items table (Parquet and the Hugging Face folder). Timestamps are ISO 8601
    UTC strings, as in JSONL and CSV, so every format carries the same text."""
    candidate = pa.struct(
        [
            ("rank", pa.int16()),
            ("product", pa.string()),
            ("sku", pa.string()),
            ("retailer", pa.string()),
            ("title", pa.string()),
            ("score", pa.float64()),
        ]
    )
    return pa.schema(
        [
            ("task", pa.string()),
            ("campaign", pa.string()),
            ("kind", pa.string()),
            ("photo", pa.string()),
            ("photo_sha256", pa.string()),
            ("image_path", pa.string()),
            ("image_url", pa.string()),
            ("split", pa.string()),
            ("candidates", pa.list_(candidate)),
            ("suggestions_withheld_by", pa.string()),
            ("labels", pa.struct([(a, _label_struct()) for a in attributes])),
        ]
    )


ANSWERS_SCHEMA = pa.schema(
    [
        ("answer", pa.string()),
        ("task", pa.string()),
        ("campaign", pa.string()),
        ("annotator", pa.string()),
        ("choice", pa.string()),
        ("label", pa.string()),
        ("product", pa.string()),
        ("duration_ms", pa.int64()),
        ("is_too_fast", pa.bool_()),
        ("created_at", pa.string()),
    ]
)
ANNOTATORS_SCHEMA = pa.schema(
    [
        ("annotator", pa.string()),
        ("campaign", pa.string()),
        ("answer_count", pa.int64()),
        ("too_fast_count", pa.int64()),
        ("gold_answer_count", pa.int64()),
        ("gold_correct_count", pa.int64()),
        ("gold_accuracy", pa.float64()),
        ("agreement", pa.float64()),
        ("reliability", pa.float64()),
        ("median_duration_ms", pa.int64()),
        ("flags", pa.list_(pa.string())),
        ("is_paused", pa.bool_()),
    ]
)


def _columnar(record: dict) -> dict:
    """A record with each posterior as a list of {label, p} (Arrow structs need fixed fields)."""
    labels = {
        name: {**value, "posterior": [{"label": k, "p": p} for k, p in value["posterior"].items()]}
        for name, value in record["labels"].items()
    }
    return {**record, "labels": labels}


def file_sha256(path: Path) -> str:
    """The sha256 of a file, hex, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Writer:
    """Base of the format writers. `folder` is this format's folder inside the snapshot."""

    name = ""

    def __init__(
        self,
        folder: Path,
        *,
        attributes: tuple[str, ...],
        labels_by_campaign: dict[str, list[str]],
        include_answers: bool,
        include_reliability: bool,
        embed_images: bool = False,
    ):
        self.folder = folder
        self.embed_images = embed_images
        self.attributes = attributes
        self.labels_by_campaign = labels_by_campaign
        self.include_answers = include_answers
        self.include_reliability = include_reliability
        folder.mkdir(parents=True, exist_ok=True)

    needs_answers = False  # the writer reads answers even when raw answers were not asked for

    def write(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def write_annotators(self, rows: list[dict]) -> None:
        """Called once at the end when reliability was asked for."""

    def close(self) -> None:
        """Flush and close every file."""


class JsonlWriter(Writer):
    """items.jsonl (one record per line), answers.jsonl and annotators.jsonl when asked for."""

    name = "jsonl"

    def __init__(self, folder, **kwargs):
        super().__init__(folder, **kwargs)
        self.items = open(folder / "items.jsonl", "w", encoding="utf-8", newline="\n")
        self.answers = (
            open(folder / "answers.jsonl", "w", encoding="utf-8", newline="\n") if self.include_answers else None
        )

    def write(self, chunk):
        self.items.writelines(_dumps(r) + "\n" for r in chunk.records)
        if self.answers:
            for rows in chunk.answers.values():
                self.answers.writelines(_dumps(a) + "\n" for a in rows)

    def write_annotators(self, rows):
        with open(self.folder / "annotators.jsonl", "w", encoding="utf-8", newline="\n") as f:
            f.writelines(_dumps(r) + "\n" for r in rows)

    def close(self):
        self.items.close()
        if self.answers:
            self.answers.close()


CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """`value` made safe for a CSV cell that a spreadsheet may open: text starting with "=", "+",
    "-", "@", tab or CR gets a leading "'" so that it is shown as text, never run as a formula
    (OWASP "CSV injection"; "=HYPERLINK(...)" in a SKU, say). Numbers, booleans and None pass
    unchanged. A reader that wants the original text drops a leading "'" followed by one of those
    characters (docs/exports.md)."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_PREFIXES):
        return "'" + value
    return value


def _csv_row(row: dict) -> dict:
    return {key: csv_cell(value) for key, value in row.items()}


class _LfRows:
    """The file under a csv writer whose lineterminator is "\r\n", ending each row with "\n".

    The csv module quotes a field only for the characters of its lineterminator, so with "\n" alone
    a bare CR inside a field ("\rCR" in a SKU) is written unquoted and splits the row when read
    back. The writer hands over one whole row per write(), so only the row's own end is changed."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, text: str) -> int:
        if text.endswith("\r\n"):
            text = text[:-2] + "\n"
        return self._fh.write(text)


def _csv_writer(fh):
    return csv.writer(_LfRows(fh), lineterminator="\r\n")


def _csv_dict_writer(fh, fieldnames):
    return csv.DictWriter(_LfRows(fh), fieldnames, lineterminator="\r\n")


def _flat_record(record: dict, attributes: tuple[str, ...]) -> dict:
    flat = {k: v for k, v in record.items() if k not in ("candidates", "labels")}
    flat["candidates"] = _dumps(record["candidates"])
    for attribute in attributes:
        value = record["labels"].get(attribute)
        for key in LABEL_FIELDS:
            cell = None if value is None else value[key]
            flat[f"{attribute}.{key}"] = _dumps(cell) if key == "posterior" and cell is not None else cell
    return flat


class CsvWriter(Writer):
    """items.csv with one column per field; nested values (candidates, posterior) as JSON text;
    `<attribute>.<field>` columns per attribute. answers.csv and annotators.csv when asked for.
    Every text cell goes through `csv_cell` (no formula injection)."""

    name = "csv"

    def __init__(self, folder, **kwargs):
        super().__init__(folder, **kwargs)
        columns = [
            "task",
            "campaign",
            "kind",
            "photo",
            "photo_sha256",
            "image_path",
            "image_url",
            "split",
            "candidates",
            "suggestions_withheld_by",
        ]
        columns += [f"{a}.{k}" for a in self.attributes for k in LABEL_FIELDS]
        self._items_file = open(folder / "items.csv", "w", encoding="utf-8", newline="")
        self.items = _csv_dict_writer(self._items_file, columns)
        self.items.writeheader()
        self._answers_file = None
        if self.include_answers:
            self._answers_file = open(folder / "answers.csv", "w", encoding="utf-8", newline="")
            self.answers = _csv_dict_writer(self._answers_file, ANSWERS_SCHEMA.names)
            self.answers.writeheader()

    def write(self, chunk):
        self.items.writerows(_csv_row(_flat_record(r, self.attributes)) for r in chunk.records)
        if self._answers_file:
            for rows in chunk.answers.values():
                self.answers.writerows(_csv_row(row) for row in rows)

    def write_annotators(self, rows):
        with open(self.folder / "annotators.csv", "w", encoding="utf-8", newline="") as f:
            writer = _csv_dict_writer(f, ANNOTATORS_SCHEMA.names)
            writer.writeheader()
            writer.writerows(_csv_row({**r, "flags": _dumps(r["flags"])}) for r in rows)

    def close(self):
        self._items_file.close()
        if self._answers_file:
            self._answers_file.close()


class _ArrowBuffer:
    """Rows turned into an Arrow record batch at once (Python dicts never pile up), written as one
    table every `rows` rows (a Parquet row group)."""

    def __init__(self, schema: pa.Schema, sink, rows: int = PARQUET_ROWS):
        self.schema, self.sink, self.limit = schema, sink, rows
        self.batches: list[pa.RecordBatch] = []
        self.count = 0

    def add(self, rows):
        batch = pa.RecordBatch.from_pylist(list(rows), schema=self.schema)
        if batch.num_rows:
            self.batches.append(batch)
            self.count += batch.num_rows
        if self.count >= self.limit:
            self.flush()

    def flush(self):
        if self.batches:
            self.sink(pa.Table.from_batches(self.batches, schema=self.schema))
            self.batches, self.count = [], 0


class ParquetWriter(Writer):
    """items.parquet (nested columns: candidates a list of structs, labels a struct per attribute,
    posterior a list of {label, p}); answers.parquet and annotators.parquet when asked for. zstd."""

    name = "parquet"

    def __init__(self, folder, **kwargs):
        super().__init__(folder, **kwargs)
        schema = items_schema(self.attributes)
        self._items = pq.ParquetWriter(folder / "items.parquet", schema, compression="zstd")
        self.items = _ArrowBuffer(schema, self._items.write_table)
        self._answers = None
        if self.include_answers:
            self._answers = pq.ParquetWriter(folder / "answers.parquet", ANSWERS_SCHEMA, compression="zstd")
            self.answers = _ArrowBuffer(ANSWERS_SCHEMA, self._answers.write_table)

    def write(self, chunk):
        self.items.add(_columnar(r) for r in chunk.records)
        if self._answers:
            # One record batch per chunk: a batch per task (5 rows) made this 4x slower.
            self.answers.add(row for rows in chunk.answers.values() for row in rows)

    def write_annotators(self, rows):
        pq.write_table(
            pa.Table.from_pylist(rows, schema=ANNOTATORS_SCHEMA), self.folder / "annotators.parquet", compression="zstd"
        )

    def close(self):
        self.items.flush()
        self._items.close()
        if self._answers:
            self.answers.flush()
            self._answers.close()


class ExportImageMissing(OSError):
    """An image to embed is missing from storage; the export fails with this message."""


class HuggingFaceWriter(Writer):
    """A Hugging Face `datasets` folder of the items, as `Dataset.save_to_disk` lays it out
    (data-00000-of-00001.arrow, dataset_info.json, state.json), with the photo as an Image feature
    and the other columns as in Parquet. Load it with `datasets.load_from_disk(folder)`. Answers and
    reliability go in the other formats.

    The Image holds the absolute path of the file under MEDIA_ROOT (decoded on access, on this
    server), or with embed_images the image bytes, so the folder loads anywhere. Rows go straight
    into the data file through datasets' own ArrowWriter; save_to_disk itself is not used, as it
    would copy the whole file again and always embed the images. The fingerprint in state.json is
    the data file's sha256, so reruns are byte-identical.
    """

    name = "hf"
    DATA_FILE = "data-00000-of-00001.arrow"

    def __init__(self, folder, **kwargs):
        super().__init__(folder, **kwargs)
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import datasets
        from datasets.arrow_writer import ArrowWriter

        datasets.disable_progress_bars()
        schema = items_schema(self.attributes)
        features = datasets.Features.from_arrow_schema(schema)
        features["image"] = datasets.Image()
        self.features = features
        self.schema = features.arrow_schema
        self._writer = ArrowWriter(features=features, path=str(folder / self.DATA_FILE), embed_local_files=False)
        # Embedded images make rows heavy: buffer fewer of them.
        self.items = _ArrowBuffer(
            self.schema, self._writer.write_table, rows=2_000 if self.embed_images else PARQUET_ROWS
        )
        self.media_root = Path(settings.MEDIA_ROOT)

    def write(self, chunk):
        self.items.add({**_columnar(r), "image": self._image(r["image_path"])} for r in chunk.records)

    def _image(self, name: str) -> dict:
        path = self.media_root / name
        if not self.embed_images:
            return {"bytes": None, "path": str(path)}
        try:
            # The path keeps only the file name, as datasets' own embedding does.
            return {"bytes": path.read_bytes(), "path": path.name}
        except OSError as exc:
            raise ExportImageMissing(f"image file of item {name} cannot be read: {exc.strerror or exc}") from exc

    def close(self):
        from dataclasses import asdict

        import datasets

        self.items.flush()
        self._writer.finalize()
        self._writer.close()
        # The two JSON files exactly as Dataset.save_to_disk writes them (datasets/arrow_dataset.py).
        state = {
            "_data_files": [{"filename": self.DATA_FILE}],
            "_fingerprint": file_sha256(self.folder / self.DATA_FILE)[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        with open(self.folder / "state.json", "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, sort_keys=True)
        info = asdict(datasets.DatasetInfo(features=self.features, description="fitcheck gold dataset export"))
        with open(self.folder / "dataset_info.json", "w", encoding="utf-8") as f:
            json.dump({key: info[key] for key in sorted(info)}, f, indent=2)


class CrowdKitWriter(Writer):
    """Crowd-Kit's raw format: answers.csv with columns worker, task, label (annotator pseudonym,
    task uuid, label key), ready for `pd.read_csv` and any `crowdkit.aggregation` model; gold.csv
    with task, label for the gold items (Crowd-Kit's `true_labels`). Too-fast answers are left out,
    as fitcheck's own consensus gives them weight 0. Cells go through `csv_cell`."""

    name = "crowdkit"
    needs_answers = True

    def __init__(self, folder, **kwargs):
        super().__init__(folder, **kwargs)
        self._answers = open(folder / "answers.csv", "w", encoding="utf-8", newline="")
        self.answers = _csv_writer(self._answers)
        self.answers.writerow(["worker", "task", "label"])
        self._gold = open(folder / "gold.csv", "w", encoding="utf-8", newline="")
        self.gold = _csv_writer(self._gold)
        self.gold.writerow(["task", "label"])

    def write(self, chunk):
        for record in chunk.records:
            self.answers.writerows(
                (csv_cell(a["annotator"]), csv_cell(record["task"]), csv_cell(a["label"]))
                for a in chunk.answers.get(record["task"], ())
                if not a["is_too_fast"]
            )
            for value in record["labels"].values():
                if value["provenance"] == "gold":
                    self.gold.writerow((csv_cell(record["task"]), csv_cell(value["label"])))
                    break

    def close(self):
        self._answers.close()
        self._gold.close()


def writers_for(formats) -> list[type[Writer]]:
    from .label_studio import LabelStudioWriter

    by_name = {
        w.name: w for w in (JsonlWriter, CsvWriter, ParquetWriter, HuggingFaceWriter, CrowdKitWriter, LabelStudioWriter)
    }
    return [by_name[f] for f in formats]
