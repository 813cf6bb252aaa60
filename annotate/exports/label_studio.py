"""Label Studio JSON: export a snapshot as Label Studio tasks with annotations, and import Label
Studio tasks and annotations into a match campaign, so a team can move over with its history.

The Label Studio JSON format (https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks):
a JSON array of tasks {"id", "data": {...}, "annotations": [{"id", "completed_by", "result": [...],
"lead_time" (s), "created_at", "ground_truth"}], "predictions": [...]}. A fitcheck match task is an
Image named "image" with a single-choice Choices control named "match" over the campaign's labels
("1".."N" = the N candidates in `data.candidates`, "none", "not_a_product", "unfit"); config.xml
in the export is that labeling config.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import quoteattr

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils.dateparse import parse_datetime

from catalog.images import ImageRejected, image_inspect, image_read, image_store, path_within
from catalog.models import Photo, Product
from catalog.services import photo_upsert

from ..consensus import services as consensus_services
from ..models import Answer, Campaign, GoldLabel, Task, TaskCandidate
from ..services import MAX_DURATION_MS, gold_set
from .formats import Writer, _dumps
from .records import Chunk

logger = logging.getLogger(__name__)

FROM_NAME, TO_NAME = "match", "image"
GOLD_ANNOTATOR = "fitcheck-gold"  # completed_by of the ground-truth annotation that carries a gold label
CONSENSUS_MODEL = "fitcheck-consensus"
IMPORT_USER_PREFIX = "ls-"
MAX_IMPORT_BYTES = 2 * 1024**3


def _result(label: str, result_id: str) -> list[dict]:
    return [
        {
            "id": result_id,
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


class LabelStudioWriter(Writer):
    """tasks.json (a Label Studio JSON array, written one task at a time) and config.xml (the
    labeling config). Every live answer is an annotation (completed_by: the annotator's pseudonym,
    lead_time: duration in s); a gold item adds a ground-truth annotation by "fitcheck-gold"; the
    consensus label is a prediction (model_version "fitcheck-consensus", score: confidence). Task and
    annotation ids count from 1 in export order."""

    name = "label_studio"
    needs_answers = True

    def __init__(self, folder, **kwargs):
        super().__init__(folder, **kwargs)
        self.file = open(folder / "tasks.json", "w", encoding="utf-8", newline="\n")
        self.file.write("[")
        self.task_id = 0
        self.annotation_id = 0

    def write(self, chunk: Chunk):
        for record in chunk.records:
            value = record["labels"].get(FROM_NAME)
            if value is None:
                continue
            self.task_id += 1
            annotations = []
            for answer in chunk.answers.get(record["task"], ()):
                self.annotation_id += 1
                annotations.append(
                    {
                        "id": self.annotation_id,
                        "completed_by": answer["annotator"],
                        "result": _result(answer["label"], f"a{self.annotation_id}"),
                        "was_cancelled": False,
                        "ground_truth": False,
                        "lead_time": answer["duration_ms"] / 1000,
                        "created_at": answer["created_at"],
                    }
                )
            if value["provenance"] == "gold":
                self.annotation_id += 1
                annotations.append(
                    {
                        "id": self.annotation_id,
                        "completed_by": GOLD_ANNOTATOR,
                        "result": _result(value["label"], f"a{self.annotation_id}"),
                        "was_cancelled": False,
                        "ground_truth": True,
                        "created_at": value["settled_at"],
                    }
                )
            task = {
                "id": self.task_id,
                "data": {
                    "image": record["image_url"],
                    "fitcheck_task": record["task"],
                    "campaign": record["campaign"],
                    "photo_sha256": record["photo_sha256"],
                    "split": record["split"],
                    "candidates": record["candidates"],
                    "candidates_text": " | ".join(
                        f"{c['rank']}: {c['title']} ({c['sku']})" for c in record["candidates"]
                    ),
                    "suggestions_withheld_by": record["suggestions_withheld_by"],
                },
                "annotations": annotations,
                "predictions": [
                    {
                        "model_version": CONSENSUS_MODEL if value["provenance"] != "model" else value["model_version"],
                        "score": value["confidence"],
                        "result": _result(value["label"], f"p{self.task_id}"),
                    }
                ],
            }
            self.file.write(("\n" if self.task_id == 1 else ",\n") + _dumps(task))

    def close(self):
        self.file.write("\n]\n" if self.task_id else "]\n")
        self.file.close()
        labels: list[str] = []
        for campaign_labels in self.labels_by_campaign.values():
            labels += [label for label in campaign_labels if label not in labels]
        labels.sort(key=lambda label: (not label.isdigit(), int(label) if label.isdigit() else 0, label))
        choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
        (self.folder / "config.xml").write_text(
            "<View>\n"
            f'  <Image name="{TO_NAME}" value="$image"/>\n'
            '  <Text name="candidates" value="$candidates_text"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">\n'
            f"{choices}\n"
            "  </Choices>\n"
            "</View>\n",
            encoding="utf-8",
        )


# -- import -----------------------------------------------------------------------------------------


class LabelStudioFileInvalid(ValueError):
    """The file as a whole is not Label Studio JSON; nothing was imported."""


@dataclass
class LabelStudioImportReport:
    """What an import did. `errors` holds (task position in the file, 1-based; reason)."""

    task_created_count: int = 0
    task_existing_count: int = 0
    answer_created_count: int = 0
    answer_existing_count: int = 0
    gold_count: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


class _TaskInvalid(ValueError):
    pass


def _image_bytes(url: str, *, images_root: Path | None) -> bytes:
    """The bytes of a Label Studio task's image: this server's own media URLs resolve inside
    MEDIA_ROOT; Label Studio upload and local-files URLs, and relative paths, inside `images_root`;
    other http(s) URLs are downloaded from public addresses only (catalog.images.url_fetch). Every path
    is realpath-checked, so "/media/../../x", "/media//tmp/x" and symlinks stay inside their folder;
    a refused and a missing file give the same message."""
    parts = urlsplit(url)
    media_path = settings.MEDIA_URL
    path = unquote(parts.path)
    if path.startswith(media_path) and (not parts.netloc or url.startswith(settings.FITCHECK_PUBLIC_URL)):
        media_root = Path(settings.MEDIA_ROOT)
        return image_read(path[len(media_path) :].lstrip("/") or ".", base_dir=media_root, roots=[media_root])
    if images_root is not None and not (parts.scheme in ("http", "https") and parts.netloc):
        if path.startswith("/data/local-files/"):
            path = parse_qs(parts.query).get("d", [""])[0]
        elif path.startswith("/data/"):
            path = path[len("/data/") :]
        return image_read(path.lstrip("/") or ".", base_dir=images_root, roots=[images_root])
    if parts.scheme.lower() in ("http", "https"):
        return image_read(url)
    raise ImageRejected(f"cannot resolve image {url!r}: pass the folder holding Label Studio's files as images_root")


def _choice(annotation: dict, labels: list[str]) -> str:
    for item in annotation.get("result") or []:
        if item.get("type") == "choices" and item.get("from_name", FROM_NAME) == FROM_NAME:
            choices = (item.get("value") or {}).get("choices") or []
            if len(choices) != 1:
                raise _TaskInvalid(f"annotation {annotation.get('id')}: expected one choice, got {len(choices)}")
            if choices[0] not in labels:
                raise _TaskInvalid(
                    f"annotation {annotation.get('id')}: unknown choice {choices[0]!r}; known: {', '.join(labels)}"
                )
            return choices[0]
    raise _TaskInvalid(f"annotation {annotation.get('id')}: no '{FROM_NAME}' choice in its result")


def _annotator(completed_by, cache: dict):
    """The user an imported annotation belongs to: an existing user with the same email, or an
    inactive user named "ls-<id or pseudonym>" (created once, no password, no role)."""
    if isinstance(completed_by, dict):
        email = completed_by.get("email") or ""
        key = email or str(completed_by.get("id", ""))
    else:
        email, key = "", str(completed_by if completed_by is not None else "")
    if not key:
        raise _TaskInvalid("annotation without completed_by")
    if key in cache:
        return cache[key]
    User = get_user_model()
    user = User.objects.filter(email=email).first() if email else None
    if user is None:
        username = (IMPORT_USER_PREFIX + key)[:150]
        user = User.objects.filter(username=username).first()
        if user is None:
            try:
                with transaction.atomic():
                    user = User.objects.create(username=username, email=email, is_active=False)
                    user.set_unusable_password()
                    user.save(update_fields=["password"])
            except IntegrityError:
                user = User.objects.get(username=username)
    cache[key] = user
    return user


def _candidates(data: dict, campaign: Campaign) -> list[tuple[int, Product, float]]:
    rows = data.get("candidates")
    if not isinstance(rows, list) or not rows:
        raise _TaskInvalid("data.candidates is missing: a match task needs its candidate products")
    found = []
    for row in rows:
        if not isinstance(row, dict):
            raise _TaskInvalid("data.candidates must be a list of objects")
        try:
            rank = int(row.get("rank"))
        except (TypeError, ValueError):
            raise _TaskInvalid(f"candidate without an integer rank: {row!r}") from None
        product = None
        if row.get("product"):
            product = Product.objects.filter(uuid=row["product"]).first() if _is_uuid(row["product"]) else None
        if product is None and row.get("sku"):
            qs = Product.objects.filter(sku=row["sku"])
            if row.get("retailer"):
                qs = qs.filter(retailer__slug=row["retailer"])
            product = qs.first()
        if product is None:
            raise _TaskInvalid(
                f"candidate {rank}: no product {row.get('retailer', '')}/{row.get('sku', '')} in the catalog"
            )
        found.append((rank, product, float(row.get("score") or 0.0)))
    ranks = sorted(rank for rank, _, _ in found)
    if ranks != list(range(1, campaign.candidate_count + 1)):
        raise _TaskInvalid(f"candidate ranks {ranks}; the campaign expects 1..{campaign.candidate_count}")
    return found


def _duration_ms(annotation: dict) -> int:
    """An annotation's lead_time (seconds, a number or numeric text; absent: 0) in ms, clamped to
    annotate.services.MAX_DURATION_MS (6 h): Label Studio adds up every session a task was open, so
    a day-long lead_time is a tab left open, not a measurement. Raises _TaskInvalid for text that is
    no number, NaN, infinity (JSON's 1e400) and negative times."""
    raw = annotation.get("lead_time")
    if raw in (None, ""):
        return 0
    try:
        if isinstance(raw, bool):
            raise TypeError
        seconds = float(raw)
    except (TypeError, ValueError):
        raise _TaskInvalid(f"annotation {annotation.get('id')}: lead_time {raw!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise _TaskInvalid(
            f"annotation {annotation.get('id')}: lead_time {raw!r} must be a finite number of seconds, 0 or more"
        )
    return min(round(seconds * 1000), MAX_DURATION_MS)


def _is_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
        return True
    except ValueError:
        return False


def _created_at(value) -> dt.datetime | None:
    parsed = parse_datetime(value) if isinstance(value, str) else None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _import_task(item: dict, *, campaign: Campaign, images_root: Path | None, users: dict, report, created_by) -> None:
    if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
        raise _TaskInvalid("not a Label Studio task (an object with data)")
    data = item["data"]
    labels = campaign.labels()
    candidates = _candidates(data, campaign)
    # Check every annotation before writing anything, so a bad one loses nothing and writes nothing.
    parsed = []
    for annotation in item.get("annotations") or []:
        if annotation.get("was_cancelled"):
            continue
        label = _choice(annotation, labels)
        if annotation.get("completed_by") in (None, "", {}):
            raise _TaskInvalid(f"annotation {annotation.get('id')}: no completed_by")
        parsed.append((annotation, label, _duration_ms(annotation)))
    try:
        blob = _image_bytes(str(data.get("image") or ""), images_root=images_root)
        info = image_inspect(blob)
    except ImageRejected as exc:
        raise _TaskInvalid(f"image: {exc}") from exc
    name = image_store(blob, info, prefix="photos")
    with transaction.atomic():
        photo_upsert(image_name=name, info=info, source="label-studio import", caption="", posted_at=None)
        photo = Photo.objects.get(sha256=info.sha256)
        task = Task.objects.filter(campaign=campaign, photo=photo).first()
        if task is None:
            task = Task.objects.create(campaign=campaign, photo=photo, shuffle_key=random.randrange(2**31))
            TaskCandidate.objects.bulk_create(
                [TaskCandidate(task=task, product=p, rank=rank, score=score) for rank, p, score in candidates]
            )
            report.task_created_count += 1
        else:
            report.task_existing_count += 1
        by_rank = {rank: p for rank, p, _ in candidates}
        for annotation, label, duration_ms in parsed:
            is_gold_marker = annotation.get("completed_by") == GOLD_ANNOTATOR
            user = None if is_gold_marker else _annotator(annotation.get("completed_by"), users)
            if annotation.get("ground_truth") or user is None:
                gold_set(task=task, label=label, source=GoldLabel.Source.IMPORT, created_by=created_by)
                report.gold_count += 1
                if user is None:  # fitcheck's own gold marker, not a person's answer
                    continue
            if Answer.objects.filter(task=task, annotator=user, revoked_at__isnull=True).exists():
                report.answer_existing_count += 1
                continue
            choice = Answer.Choice.PRODUCT if label.isdigit() else label
            answer = Answer.objects.create(
                task=task,
                annotator=user,
                choice=choice,
                product=by_rank.get(int(label)) if label.isdigit() else None,
                duration_ms=duration_ms,
                label=label,
                is_too_fast=duration_ms < campaign.min_duration_ms,
                idempotency_key=f"ls-import:{task.uuid}",
            )
            created_at = _created_at(annotation.get("created_at"))
            if created_at is not None:
                Answer.objects.filter(pk=answer.pk).update(created_at=created_at)
            report.answer_created_count += 1


def label_studio_import(
    *,
    campaign: Campaign,
    path: Path,
    images_root: Path | None = None,
    created_by=None,
    progress: Callable[[int], None] | None = None,
) -> LabelStudioImportReport:
    """Import Label Studio JSON tasks with their annotations into `campaign` (kind match).

    Each task becomes a Task (photo keyed by image sha256, candidates from `data.candidates` matched
    to catalog products by uuid or retailer/sku), each non-cancelled annotation an Answer by its
    annotator (lead_time → duration_ms, created_at kept), and a ground-truth annotation a gold label.
    Each task is written in its own transaction; a bad task is reported by position and skipped.
    Idempotent: a photo already in the campaign keeps its task, a person's existing answer is kept.
    Then one full consensus recompute settles the labels.

    Args:
        path: a Label Studio JSON export (a JSON array of tasks), at most 2 GiB; it is read whole.
        images_root: the folder that Label Studio's "/data/upload/..." and "/data/local-files/?d="
            URLs and relative paths resolve against (never outside it); it must lie inside
            settings.FITCHECK_IMPORT_ROOTS.

    Raises:
        LabelStudioFileInvalid: unreadable, not JSON, not an array, too big, the campaign is not
            a match campaign, or images_root is outside the import roots; nothing was imported.
    """
    if campaign.kind != Campaign.Kind.MATCH:
        raise LabelStudioFileInvalid(f"campaign {campaign.slug} is not a match campaign")
    if images_root is not None and path_within(images_root, settings.FITCHECK_IMPORT_ROOTS) is None:
        raise LabelStudioFileInvalid(
            f"images_root {images_root} is not inside FITCHECK_IMPORT_ROOTS "
            f"({', '.join(str(r) for r in settings.FITCHECK_IMPORT_ROOTS) or 'none set'})"
        )
    try:
        size = path.stat().st_size
        if size > MAX_IMPORT_BYTES:
            raise LabelStudioFileInvalid(f"{path} is {size} bytes; the limit is {MAX_IMPORT_BYTES}")
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except OSError as exc:
        raise LabelStudioFileInvalid(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelStudioFileInvalid(f"{path} is not JSON: {exc}") from exc
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise LabelStudioFileInvalid(f"{path}: expected a JSON array of Label Studio tasks")
    report = LabelStudioImportReport()
    users: dict = {}
    for position, item in enumerate(items, start=1):
        try:
            _import_task(
                item, campaign=campaign, images_root=images_root, users=users, report=report, created_by=created_by
            )
        except _TaskInvalid as exc:
            report.errors.append((position, str(exc)))
        if progress:
            progress(1)
    if report.answer_created_count or report.gold_count:
        consensus_services.consensus_recompute(campaign_id=campaign.pk)
    return report
