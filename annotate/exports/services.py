"""Gold-dataset exports: create a snapshot (queued for the worker), build it (stream records to every
asked-for format, hash the files, publish them atomically), and page through raw answers.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Max
from django.utils import timezone

from mlcore.jobs import PENDING_RESEND_AFTER, RESEND_EXPIRES_S, send_on_commit, task_send

from ..models import Answer, ExportSnapshot
from . import records
from .formats import file_sha256, writers_for
from .records import ExportFilters, ExportInvalid

logger = logging.getLogger(__name__)

STALE_AFTER = timedelta(minutes=10)  # a RUNNING build without a heartbeat this long is re-claimable
HEARTBEAT_S = 1.0
ANSWERS_PAGE_MAX = 10_000


def exports_root() -> Path:
    return Path(settings.FITCHECK_EXPORTS_ROOT)


def snapshot_folder(snapshot: ExportSnapshot) -> Path:
    """Where a finished snapshot's files live: FITCHECK_EXPORTS_ROOT/<uuid>/."""
    return exports_root() / str(snapshot.uuid)


def export_create(
    *,
    name: str,
    formats: list[str],
    filters: dict | None = None,
    include_answers: bool = False,
    include_reliability: bool = False,
    embed_images: bool = False,
    created_by=None,
) -> ExportSnapshot:
    """Validate the options and create a PENDING snapshot, numbered one past the last snapshot of
    `name`; the Celery task annotate.export_build builds it after the transaction commits. When the
    broker cannot take that message, the snapshot stays PENDING ("Queued") and `exports_recover`
    sends it again once the broker is back (mlcore.jobs): no error reaches the caller.

    Args:
        name: a slug; snapshots of one name are versions 1, 2, 3...
        formats: ExportSnapshot.Format values, at least one, each once.
        filters: see records.ExportFilters.parse.

    Raises:
        ExportInvalid: a bad name, format or filter (errors per field).
    """
    errors: dict[str, list[str]] = {}
    try:
        validate_slug(name)
        if len(name) > 80:
            raise ValidationError("too long")
    except ValidationError:
        errors["name"] = ["must be a slug (letters, digits, - and _) of at most 80 characters"]
    valid = set(ExportSnapshot.Format.values)
    if not isinstance(formats, list) or not formats or not all(isinstance(f, str) for f in formats):
        errors["formats"] = [f"must be a non-empty list of: {', '.join(ExportSnapshot.Format.values)}"]
    else:
        bad = sorted(set(formats) - valid)
        if bad:
            errors["formats"] = [f"unknown: {', '.join(bad)}; known: {', '.join(ExportSnapshot.Format.values)}"]
        elif len(set(formats)) != len(formats):
            errors["formats"] = ["each format once"]
    try:
        parsed = ExportFilters.parse(filters)
    except ExportInvalid as exc:
        errors.update(exc.errors)
    if errors:
        raise ExportInvalid(errors)
    from ..tasks import export_build_task

    for _attempt in range(5):
        try:
            with transaction.atomic():
                last = ExportSnapshot.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0
                snapshot = ExportSnapshot.objects.create(
                    name=name,
                    version=last + 1,
                    schema_version=records.SCHEMA_VERSION,
                    formats=formats,
                    filters=parsed.as_json(),
                    include_answers=include_answers,
                    include_reliability=include_reliability,
                    embed_images=embed_images,
                    created_by=created_by,
                )
                send_on_commit(export_build_task.si(snapshot.pk))
            return snapshot
        except IntegrityError:  # someone took the same version number at the same moment
            continue
    raise ExportInvalid({"name": ["too many snapshots of this name are being created at once; retry"]})


class _Progress:
    """Writes progress (total_count, done_count, heartbeat_at) of the snapshot, at most once a second,
    through its own database connection when the build holds a read transaction (so the exports page
    sees progress before the build ends), else through the default one."""

    def __init__(self, snapshot: ExportSnapshot, *, separate: bool):
        self.pk = snapshot.pk
        self.conn = connections.create_connection("default") if separate else None
        self.last = 0.0

    def _update(self, **fields) -> None:
        fields["heartbeat_at"] = timezone.now()
        if self.conn is None:
            ExportSnapshot.objects.filter(pk=self.pk).update(**fields)
            return
        ops = self.conn.ops
        fields["heartbeat_at"] = ops.adapt_datetimefield_value(fields["heartbeat_at"])
        sets = ", ".join(f"{ops.quote_name(name)} = %s" for name in fields)
        with self.conn.cursor() as cursor:
            cursor.execute(f"UPDATE annotate_exportsnapshot SET {sets} WHERE id = %s", [*fields.values(), self.pk])

    def total(self, total: int) -> None:
        self._update(total_count=total)

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_S:
            self.last = now
            self._update(done_count=done)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _claim(snapshot_id: int) -> ExportSnapshot | None:
    now = timezone.now()
    claimed = (
        ExportSnapshot.objects.filter(pk=snapshot_id, status=ExportSnapshot.Status.PENDING).update(
            status=ExportSnapshot.Status.RUNNING, started_at=now, heartbeat_at=now, error=""
        )
    ) or (
        ExportSnapshot.objects.filter(
            pk=snapshot_id, status=ExportSnapshot.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER
        ).update(started_at=now, heartbeat_at=now, error="")
    )
    return ExportSnapshot.objects.get(pk=snapshot_id) if claimed else None


class _ReadSnapshot:
    """One consistent read snapshot for the whole build, without blocking writers: on PostgreSQL a
    REPEATABLE READ, READ ONLY transaction; on SQLite (WAL) a deferred BEGIN, which the IMMEDIATE
    transaction mode of Django's atomic() would not give. Inside a caller's transaction (tests) the
    reads simply join it."""

    def __init__(self):
        self.active = not connection.in_atomic_block

    def __enter__(self):
        if not self.active:
            return self
        connection.ensure_connection()
        if connection.vendor == "postgresql":
            connection.set_autocommit(False)
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        else:
            with connection.cursor() as cursor:
                cursor.execute("BEGIN DEFERRED")
        return self

    def __exit__(self, *exc):
        if not self.active:
            return False
        if connection.vendor == "postgresql":
            connection.rollback()
            connection.set_autocommit(True)
        else:
            with connection.cursor() as cursor:
                cursor.execute("COMMIT")
        return False


def export_build(*, snapshot_id: int) -> ExportSnapshot | None:
    """Build a PENDING snapshot: read the settled items (one consistent read snapshot, chunked),
    write every format into FITCHECK_EXPORTS_ROOT/<uuid>.partial/, hash each file (sha256), then
    rename the folder to <uuid>/ and mark the snapshot DONE with its files and counts. Memory stays
    flat: records are streamed chunk by chunk to every writer.

    Idempotent: a DONE or FAILED snapshot, or one another worker is building (heartbeat within
    STALE_AFTER), is left alone and None returned; a stale RUNNING one is rebuilt from scratch.
    Any error marks the snapshot FAILED with the error text and removes the partial folder.

    Returns the built snapshot, or None when there was nothing to do.
    """
    snapshot = _claim(snapshot_id)
    if snapshot is None:
        logger.info("export %s: not pending (done, failed, missing or being built); skipped", snapshot_id)
        return None
    final = snapshot_folder(snapshot)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    filters = ExportFilters.parse(snapshot.filters)
    read = _ReadSnapshot()
    progress = _Progress(snapshot, separate=read.active)
    try:
        item_count = answer_count = annotator_count = 0
        with read:
            ids = records.item_ids(filters)
            progress.total(len(ids))
            labels_by_campaign = records.campaign_labels(filters)
            attributes = tuple(sorted({a for kind in records.ATTRIBUTES_BY_KIND for a in filters.attributes_for(kind)}))
            writer_classes = writers_for(snapshot.formats)
            writers = [
                cls(
                    partial / cls.name,
                    attributes=attributes,
                    labels_by_campaign=labels_by_campaign,
                    include_answers=snapshot.include_answers,
                    include_reliability=snapshot.include_reliability,
                    embed_images=snapshot.embed_images,
                )
                for cls in writer_classes
            ]
            with_answers = snapshot.include_answers or any(cls.needs_answers for cls in writer_classes)
            try:
                for chunk in records.chunks(
                    ids, filters, labels_by_campaign=labels_by_campaign, with_answers=with_answers
                ):
                    for writer in writers:
                        writer.write(chunk)
                    item_count += len(chunk.records)
                    answer_count += sum(len(rows) for rows in chunk.answers.values())
                    progress(item_count)
                if snapshot.include_reliability:
                    annotators = list(records.annotator_rows(filters))
                    annotator_count = len(annotators)
                    for writer in writers:
                        writer.write_annotators(annotators)
            finally:
                for writer in writers:
                    writer.close()
        files = []
        for path in sorted(p for p in partial.rglob("*") if p.is_file()):
            rel = path.relative_to(partial).as_posix()
            files.append(
                {
                    "path": rel,
                    "format": rel.split("/", 1)[0],
                    "size_bytes": path.stat().st_size,
                    "sha256": file_sha256(path),
                }
            )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        ExportSnapshot.objects.filter(pk=snapshot.pk).update(
            status=ExportSnapshot.Status.DONE,
            files=files,
            size_bytes=sum(f["size_bytes"] for f in files),
            total_count=item_count,
            done_count=item_count,
            item_count=item_count,
            answer_count=answer_count,
            annotator_count=annotator_count,
            finished_at=timezone.now(),
            heartbeat_at=timezone.now(),
        )
    except Exception as exc:
        logger.exception("export %s failed", snapshot.uuid)
        shutil.rmtree(partial, ignore_errors=True)
        ExportSnapshot.objects.filter(pk=snapshot.pk).update(
            status=ExportSnapshot.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:5000], finished_at=timezone.now()
        )
    finally:
        progress.close()
    snapshot.refresh_from_db()
    return snapshot


def exports_recover(*, now=None) -> int:
    """Send annotate.export_build again for every snapshot nobody is building: PENDING for longer
    than mlcore.jobs.PENDING_RESEND_AFTER (its message was lost, or never reached a broker that was
    down) or RUNNING with a heartbeat older than STALE_AFTER (its worker died; the build starts
    again from scratch, `export_build`). Run by Celery beat (annotate.jobs_recover). Idempotent: the
    build claims with a conditional update, and the messages sent here expire. A broker outage is
    logged, not raised. Returns the number of snapshots sent again."""
    from django.db.models import Q

    from ..tasks import export_build_task

    now = now or timezone.now()
    ids = list(
        ExportSnapshot.objects.filter(
            Q(status=ExportSnapshot.Status.PENDING, created_at__lt=now - PENDING_RESEND_AFTER)
            | Q(status=ExportSnapshot.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
        ).values_list("pk", flat=True)
    )
    sent = sum(task_send(export_build_task.si(pk), expires=RESEND_EXPIRES_S) for pk in ids)
    if ids:
        logger.info("sent %s of %s stalled export builds again", sent, len(ids))
    return sent


def export_file_path(*, snapshot: ExportSnapshot, path: str) -> Path:
    """The file `path` (as listed in snapshot.files) of a DONE snapshot.

    Raises:
        FileNotFoundError: not DONE, not one of its files, or gone from storage.
    """
    if snapshot.status != ExportSnapshot.Status.DONE or path not in {f["path"] for f in snapshot.files}:
        raise FileNotFoundError(path)
    full = snapshot_folder(snapshot) / path
    if not full.is_file():
        raise FileNotFoundError(path)
    return full


class _ZipSink(io.RawIOBase):
    """A write-only, unseekable stream that keeps what zipfile writes until `drain` hands it on."""

    def __init__(self):
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def export_zip_stream(*, snapshot: ExportSnapshot, chunk_bytes: int = 1 << 20):
    """Every file of a DONE snapshot as one ZIP archive, streamed: an iterator of bytes chunks, never
    the whole archive in memory or on disk. Entries are stored (not compressed: parquet and the
    rest are compressed already, and a re-compression would cost minutes on large exports), ZIP64
    when needed, under <name>-v<version>/<path>; the snapshot's own manifest and checksums are among
    the files. Python's zipfile on an unseekable stream (data descriptors).

    Raises:
        FileNotFoundError: the snapshot is not DONE, or one of its files is gone from storage
            (checked before the first byte is sent).
    """
    import zipfile

    if snapshot.status != ExportSnapshot.Status.DONE:
        raise FileNotFoundError(f"export {snapshot.uuid} is {snapshot.status}")
    paths = [(f["path"], export_file_path(snapshot=snapshot, path=f["path"])) for f in snapshot.files]
    folder = f"{snapshot.name}-v{snapshot.version}"

    def chunks():
        sink = _ZipSink()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for path, full in paths:
                with archive.open(f"{folder}/{path}", "w", force_zip64=True) as entry, open(full, "rb") as source:
                    while data := source.read(chunk_bytes):
                        entry.write(data)
                        yield sink.drain()
                yield sink.drain()
        yield sink.drain()

    return chunks()


# -- raw answers, cursor-paginated --------------------------------------------------------------------

_CURSOR_SALT = "fitcheck.answers.cursor"


def answers_cursor_encode(last_pk: int) -> str:
    """An opaque, signed cursor for the answer after `last_pk` (ids never leave the server readable)."""
    return signing.dumps(last_pk, salt=_CURSOR_SALT, compress=True)


def answers_cursor_decode(cursor: str | None) -> int:
    """Raises ExportInvalid when the cursor was not made by answers_cursor_encode."""
    if not cursor:
        return 0
    try:
        return int(signing.loads(cursor, salt=_CURSOR_SALT))
    except (signing.BadSignature, TypeError, ValueError):
        raise ExportInvalid({"cursor": ["not a cursor this server issued"]}) from None


def _attribute_values(answer_ids) -> dict[int, dict]:
    """{answer id: {attribute slug: value}} of attribute answers: a multi choice as a list of options,
    the rest as stored (str). One query."""
    from catalog.models import Attribute

    from ..models import AttributeAnswer

    values: dict[int, dict] = {}
    rows = AttributeAnswer.objects.filter(answer_id__in=answer_ids).values_list(
        "answer_id", "attribute__slug", "attribute__kind", "value"
    )
    for answer_id, slug, kind, value in rows:
        values.setdefault(answer_id, {})[slug] = (
            [v for v in value.split("|") if v] if kind == Attribute.Kind.MULTI else value
        )
    return values


def answers_page(*, campaign, after_pk: int, limit: int):
    """Live answers of `campaign` after `after_pk`, oldest first, as an iterator of dicts (the raw
    answers rows of records.chunks) read in chunks of 2,000; the caller streams them. Each row has
    "values": for an attributes campaign {attribute slug: value} (a multi choice a list), else
    None. The last row carries "_pk" for the next cursor.
    """
    from itertools import islice

    from ..models import Campaign

    qs = (
        Answer.objects.filter(task__campaign=campaign, revoked_at__isnull=True, pk__gt=after_pk)
        .order_by("pk")
        .values_list(
            "pk",
            "uuid",
            "task__uuid",
            "annotator_id",
            "choice",
            "label",
            "product__uuid",
            "duration_ms",
            "is_too_fast",
            "created_at",
        )[:limit]
    )
    pseudonyms: dict[int, str] = {}
    tagging = campaign.kind == Campaign.Kind.ATTRIBUTES
    rows = qs.iterator(chunk_size=2_000)
    while chunk := list(islice(rows, 2_000)):
        values = _attribute_values([row[0] for row in chunk]) if tagging else {}
        for (
            pk,
            a_uuid,
            task_uuid,
            annotator_id,
            choice,
            label,
            product,
            duration_ms,
            is_too_fast,
            created_at,
        ) in chunk:
            if annotator_id not in pseudonyms:
                pseudonyms[annotator_id] = records.annotator_pseudonym(annotator_id)
            yield {
                "_pk": pk,
                "answer": str(a_uuid),
                "task": str(task_uuid),
                "campaign": campaign.slug,
                "annotator": pseudonyms[annotator_id],
                "choice": choice,
                "label": label,
                "values": values.get(pk, {}) if tagging else None,
                "product": str(product) if product else None,
                "duration_ms": duration_ms,
                "is_too_fast": is_too_fast,
                "created_at": records._iso(created_at),
            }
