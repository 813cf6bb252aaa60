"""What a gold-dataset export contains: the filters, and the records read from the database in
chunks (flat memory whatever the size of the export).

One record per item (a task: a customer photo with its candidate products) with every settled
attribute under `labels`; a match campaign has one attribute, "match". Raw answers and annotator
reliability are optional side tables. Annotators appear only as pseudonyms (`annotator_pseudonym`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from array import array
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from urllib.parse import urljoin

from django.conf import settings
from django.db.models import F, Q
from django.utils.dateparse import parse_datetime

from ..models import AnnotatorStats, Answer, Campaign, Task, TaskCandidate

SCHEMA_VERSION = 2  # 2: items carry suggestions_withheld_by (the column after candidates)
CHUNK = 2_000  # items per read; each chunk is three queries (items, candidates, answers)

PROVENANCES = ("gold", "human", "model")
ATTRIBUTES_BY_KIND = {Campaign.Kind.MATCH: ("match",)}
ALL_ATTRIBUTES = tuple(sorted({a for attributes in ATTRIBUTES_BY_KIND.values() for a in attributes}))
# Stable split by hash of the photo uuid: the first SPLITS[i] per mille of hash space go to split i.
SPLITS = (("train", 800), ("validation", 900), ("test", 1000))


class ExportInvalid(ValueError):
    """Bad export options: `errors` maps a field to its messages."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class ExportFilters:
    """Which settled items an export holds. Empty tuples mean "all".

    Attributes:
        campaigns: campaign slugs.
        attributes: attribute names (ALL_ATTRIBUTES).
        min_confidence: in [0, 1]; gold items count as confidence 1.
        provenance: any of "gold", "human" (consensus of people), "model" (auto-accepted).
        settled_from, settled_to: ISO 8601 datetimes, inclusive; when the label settled (the task
            completed, or its gold label was set).
        exclude_contested: drop items that reached the overlap cap below the campaign's confidence
            target (people kept disagreeing).
    """

    campaigns: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    min_confidence: float = 0.0
    provenance: tuple[str, ...] = ()
    settled_from: str | None = None
    settled_to: str | None = None
    exclude_contested: bool = False

    @classmethod
    def parse(cls, data: dict | None) -> ExportFilters:
        """Validate and normalise filters given as JSON (lists sorted and deduplicated, datetimes in
        UTC ISO 8601), so equal filters compare and store equal.

        Raises:
            ExportInvalid: unknown keys, campaigns, attributes or provenance; a confidence outside
                [0, 1]; an unparsable datetime or an empty date range.
        """
        data = dict(data or {})
        errors: dict[str, list[str]] = {}
        known = {f for f in cls.__dataclass_fields__}
        for key in sorted(set(data) - known):
            errors.setdefault(key, []).append(f"unknown filter; known: {', '.join(sorted(known))}")

        def names(key: str, allowed) -> tuple[str, ...]:
            value = data.get(key) or []
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                errors.setdefault(key, []).append("must be a list of strings")
                return ()
            bad = sorted(set(value) - set(allowed))
            if bad:
                errors.setdefault(key, []).append(f"unknown: {', '.join(bad)}")
            return tuple(sorted(set(value)))

        campaigns = names("campaigns", data.get("campaigns") or [])
        if campaigns:
            found = set(Campaign.objects.filter(slug__in=campaigns).values_list("slug", flat=True))
            missing = sorted(set(campaigns) - found)
            if missing:
                errors.setdefault("campaigns", []).append(f"no such campaign: {', '.join(missing)}")
        attributes = names("attributes", ALL_ATTRIBUTES)
        provenance = names("provenance", PROVENANCES)
        try:
            min_confidence = float(data.get("min_confidence") or 0.0)
            if not 0.0 <= min_confidence <= 1.0:
                raise ValueError
        except (TypeError, ValueError):
            errors.setdefault("min_confidence", []).append("must be a number in [0, 1]")
            min_confidence = 0.0
        bounds = {}
        for key in ("settled_from", "settled_to"):
            raw = data.get(key)
            bounds[key] = None
            if raw in (None, ""):
                continue
            parsed = parse_datetime(raw) if isinstance(raw, str) else None
            if parsed is None and isinstance(raw, str):
                try:
                    parsed = dt.datetime.combine(dt.date.fromisoformat(raw), dt.time.min)
                except ValueError:
                    parsed = None
            if parsed is None:
                errors.setdefault(key, []).append("must be an ISO 8601 date or datetime")
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            bounds[key] = parsed.astimezone(dt.UTC).isoformat()
        if bounds["settled_from"] and bounds["settled_to"] and bounds["settled_from"] > bounds["settled_to"]:
            errors.setdefault("settled_to", []).append("is before settled_from")
        exclude_contested = data.get("exclude_contested", False)
        if not isinstance(exclude_contested, bool):
            errors.setdefault("exclude_contested", []).append("must be true or false")
        if errors:
            raise ExportInvalid(errors)
        return cls(
            campaigns=campaigns,
            attributes=attributes,
            min_confidence=min_confidence,
            provenance=provenance,
            settled_from=bounds["settled_from"],
            settled_to=bounds["settled_to"],
            exclude_contested=exclude_contested,
        )

    def as_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def attributes_for(self, kind: str) -> tuple[str, ...]:
        """The exported attributes of a campaign kind."""
        return tuple(a for a in ATTRIBUTES_BY_KIND[kind] if not self.attributes or a in self.attributes)


def _gold_q() -> Q:
    return Q(is_gold=True, gold__isnull=False)


def items_queryset(filters: ExportFilters):
    """Settled tasks matching `filters`, in export order (by id). Settled: complete (people or the
    model settled it) or gold with a known answer."""
    gold = _gold_q()
    human = ~gold & Q(status=Task.Status.COMPLETE, label_model_version__isnull=True)
    model = ~gold & Q(status=Task.Status.COMPLETE, label_model_version__isnull=False)
    qs = Task.objects.filter(gold | Q(status=Task.Status.COMPLETE))
    kinds = [kind for kind in ATTRIBUTES_BY_KIND if filters.attributes_for(kind)]
    qs = qs.filter(campaign__kind__in=kinds)
    if filters.campaigns:
        qs = qs.filter(campaign__slug__in=filters.campaigns)
    if filters.provenance:
        by_name = {"gold": gold, "human": human, "model": model}
        wanted = Q(pk__in=[])
        for name in filters.provenance:
            wanted |= by_name[name]
        qs = qs.filter(wanted)
    if filters.min_confidence > 0:
        qs = qs.filter(gold | Q(confidence__gte=filters.min_confidence))
    if filters.settled_from or filters.settled_to:
        window_gold, window_done = Q(), Q()
        if filters.settled_from:
            start = dt.datetime.fromisoformat(filters.settled_from)
            window_gold &= Q(gold__created_at__gte=start)
            window_done &= Q(completed_at__gte=start)
        if filters.settled_to:
            end = dt.datetime.fromisoformat(filters.settled_to)
            window_gold &= Q(gold__created_at__lte=end)
            window_done &= Q(completed_at__lte=end)
        qs = qs.filter((gold & window_gold) | (~gold & window_done))
    if filters.exclude_contested:
        qs = qs.exclude(human & Q(confidence__lt=F("campaign__confidence_target")))
    return qs.order_by("pk")


def annotator_pseudonym(annotator_id: int) -> str:
    """A stable pseudonym for an annotator: "a-" and 16 hex digits of HMAC-SHA256 under
    settings.FITCHECK_PSEUDONYM_KEY (its own secret, not SECRET_KEY: a leaked or public SECRET_KEY
    must not turn the pseudonyms of every export back into user ids, and rotating SECRET_KEY must
    not change them). The same person has the same pseudonym in every export (so reliability joins
    answers), and it cannot be turned back into a user without that key."""
    key = settings.FITCHECK_PSEUDONYM_KEY.encode()
    digest = hmac.new(key, f"fitcheck-annotator:{annotator_id}".encode(), hashlib.sha256)
    return "a-" + digest.hexdigest()[:16]


def split_of(key: str) -> str:
    """The stable train/validation/test split of an item: sha256 of `key` (the photo uuid), first 8
    bytes as an integer, modulo 1000, against SPLITS (80/10/10)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 1000
    return next(name for name, upper in SPLITS if bucket < upper)


ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # every timestamp in an export: UTC, always 6 fraction digits


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime(ISO_FORMAT) if value else None


@dataclass
class Chunk:
    """One chunk of items: their records, in export order, and (when asked for) their live answers
    as rows, grouped by the item's task uuid in answer order."""

    records: list[dict]
    answers: dict[str, list[dict]] = field(default_factory=dict)


def item_ids(filters: ExportFilters) -> array:
    """The ids of the export's items, ascending, as a compact array (8 bytes each: 1.6 MB for
    200,000 items). Read once inside the build's read snapshot; the chunks then fetch by id, which
    keeps each chunk's query cheap however the filters join."""
    ids = array("q")
    ids.extend(items_queryset(filters).values_list("pk", flat=True).iterator(chunk_size=10_000))
    return ids


class _Sql:
    """The three per-chunk reads as plain SQL, with uuids and timestamps turned into text by the
    database where it can (PostgreSQL), and by string slicing where it stores text already (SQLite):
    the ORM's per-value converters cost about 4x the whole read at a million answers (bench/export.py)."""

    def __init__(self):
        from django.db import connection

        from catalog.models import Photo, Product, Retailer
        from mlcore.models import ModelVersion

        from ..models import GoldLabel

        self.connection = connection
        self.postgres = connection.vendor == "postgresql"
        pg = self.postgres

        def uuid_text(column: str) -> str:
            return f"{column}::text" if pg else column

        def ts_text(column: str) -> str:
            if pg:
                return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
            return f"CAST({column} AS TEXT)"  # an expression has no declared type: Django's converter stays out

        def where(column: str) -> str:
            return f"{column} = ANY(%s)" if pg else f"{column} IN ({{marks}})"

        table = {
            m: m._meta.db_table
            for m in (Task, Campaign, Photo, GoldLabel, ModelVersion, TaskCandidate, Product, Retailer, Answer)
        }
        self.items = (
            f"SELECT t.id, {uuid_text('t.uuid')}, c.slug, c.kind, c.confidence_target, {uuid_text('p.uuid')}, "
            f"p.sha256, p.image, t.label, {'t.posterior::text' if pg else 't.posterior'}, t.confidence, "
            f"t.answer_count, t.is_gold, g.label, {ts_text('g.created_at')}, {ts_text('t.completed_at')}, mv.name, "
            "wv.name "
            f"FROM {table[Task]} t JOIN {table[Campaign]} c ON c.id = t.campaign_id "
            f"JOIN {table[Photo]} p ON p.id = t.photo_id "
            f"LEFT JOIN {table[GoldLabel]} g ON g.task_id = t.id "
            f"LEFT JOIN {table[ModelVersion]} mv ON mv.id = t.label_model_version_id "
            f"LEFT JOIN {table[ModelVersion]} wv ON wv.id = t.suggestions_withheld_by_id "
            f"WHERE {where('t.id')} ORDER BY t.id"
        )
        self.candidates = (
            f"SELECT tc.task_id, tc.rank, {uuid_text('pr.uuid')}, pr.sku, r.slug, pr.title, tc.score "
            f"FROM {table[TaskCandidate]} tc JOIN {table[Product]} pr ON pr.id = tc.product_id "
            f"JOIN {table[Retailer]} r ON r.id = pr.retailer_id "
            f"WHERE {where('tc.task_id')} ORDER BY tc.task_id, tc.rank"
        )
        self.answers = (
            f"SELECT a.task_id, {uuid_text('a.uuid')}, a.annotator_id, a.choice, a.label, {uuid_text('pr.uuid')}, "
            f"a.duration_ms, a.is_too_fast, {ts_text('a.created_at')} "
            f"FROM {table[Answer]} a LEFT JOIN {table[Product]} pr ON pr.id = a.product_id "
            f"WHERE {where('a.task_id')} AND a.revoked_at IS NULL ORDER BY a.task_id, a.id"
        )
        self.votes = (
            f"SELECT a.task_id, a.label, COUNT(*) FROM {table[Answer]} a "
            f"WHERE {where('a.task_id')} AND a.revoked_at IS NULL AND NOT a.is_too_fast "
            "GROUP BY a.task_id, a.label"
        )

    def rows(self, sql: str, ids: list[int]):
        with self.connection.cursor() as cursor:
            if self.postgres:
                cursor.execute(sql, [ids])
            else:
                cursor.execute(sql.replace("{marks}", ", ".join(["%s"] * len(ids))), ids)
            while batch := cursor.fetchmany(5_000):
                yield from batch

    def uuid(self, value: str | None) -> str | None:
        """Canonical text of a uuid column (SQLite stores 32 hex digits)."""
        if value is None or self.postgres:
            return value
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"

    def ts(self, value: str | None) -> str | None:
        """ISO_FORMAT text of a timestamp column read as text (PostgreSQL: to_char; SQLite: stored as
        "YYYY-MM-DD HH:MM:SS[.ffffff]" in UTC)."""
        if value is None:
            return None
        if self.postgres:
            return value + "Z"
        text = value.replace(" ", "T")
        if len(text) == 19:  # Django leaves the fraction out when it is zero
            text += ".000000"
        return text[:26].ljust(26, "0") + "Z"


def chunks(
    ids: array, filters: ExportFilters, *, labels_by_campaign: dict[str, list[str]], with_answers: bool
) -> Iterator[Chunk]:
    """The items `ids` (from item_ids) in chunks of CHUNK, three plain SQL reads per chunk, so
    memory stays flat on SQLite and PostgreSQL alike. Reads see one snapshot only when the caller
    holds a read transaction (exports.services.export_build does).

    Args:
        labels_by_campaign: campaign_labels(filters); posteriors are written in this label order.

    Yields:
        Chunk: records (dicts shaped as in docs/exports.md) and, if `with_answers`, answer rows:
        {"answer", "task", "campaign", "annotator" (pseudonym), "choice", "label", "product",
        "duration_ms", "is_too_fast", "created_at"}. Revoked (undone) answers are left out.
    """
    media_url = urljoin(settings.FITCHECK_PUBLIC_URL.rstrip("/") + "/", settings.MEDIA_URL.lstrip("/"))
    sql = _Sql()
    pseudonyms: dict[int, str] = {}
    for start in range(0, len(ids), CHUNK):
        chunk_ids = ids[start : start + CHUNK].tolist()
        candidates = defaultdict(list)
        for task_id, rank, product, sku, retailer, title, score in sql.rows(sql.candidates, chunk_ids):
            candidates[task_id].append(
                {
                    "rank": rank,
                    "product": sql.uuid(product),
                    "sku": sku,
                    "retailer": retailer,
                    "title": title,
                    "score": round(score, 6),
                }
            )
        votes: dict[int, dict[str, int]] = defaultdict(dict)
        answers: dict[int, list[dict]] = defaultdict(list)
        if with_answers:
            for task_id, a_uuid, annotator_id, choice, label, product, duration_ms, is_too_fast, created_at in sql.rows(
                sql.answers, chunk_ids
            ):
                if annotator_id not in pseudonyms:
                    pseudonyms[annotator_id] = annotator_pseudonym(annotator_id)
                answers[task_id].append(
                    {
                        "answer": sql.uuid(a_uuid),
                        "annotator": pseudonyms[annotator_id],
                        "choice": choice,
                        "label": label,
                        "product": sql.uuid(product),
                        "duration_ms": duration_ms,
                        "is_too_fast": bool(is_too_fast),
                        "created_at": sql.ts(created_at),
                    }
                )
                if not is_too_fast:
                    votes[task_id][label] = votes[task_id].get(label, 0) + 1
        else:
            for task_id, label, n in sql.rows(sql.votes, chunk_ids):
                votes[task_id][label] = n
        chunk = Chunk(records=[])
        for row in sql.rows(sql.items, chunk_ids):
            record = _record(
                row, sql, candidates[row[0]], votes.get(row[0], {}), filters, labels_by_campaign, media_url
            )
            chunk.records.append(record)
            if with_answers:
                task_rows = answers.get(row[0], [])
                for answer in task_rows:
                    answer["task"] = record["task"]
                    answer["campaign"] = record["campaign"]
                chunk.answers[record["task"]] = task_rows
        yield chunk


def _record(
    row: tuple,
    sql: _Sql,
    candidates: list[dict],
    votes: dict[str, int],
    filters: ExportFilters,
    labels_by_campaign: dict[str, list[str]],
    media_url: str,
) -> dict:
    (
        _pk,
        task_uuid,
        slug,
        kind,
        target,
        photo_uuid,
        photo_sha256,
        image,
        label,
        posterior_text,
        confidence,
        answer_count,
        is_gold,
        gold_label,
        gold_at,
        completed_at,
        model_name,
        withheld_by,
    ) = row
    if is_gold and gold_label is not None:
        label, posterior, confidence, provenance, settled_at = gold_label, {gold_label: 1.0}, 1.0, "gold", gold_at
    else:
        posterior = json.loads(posterior_text) if posterior_text else {}
        provenance = "model" if model_name else "human"
        settled_at = completed_at
    # The campaign's label order, whatever order the database kept the keys in (jsonb sorts them).
    order = labels_by_campaign.get(slug, [])
    keys = [k for k in order if k in posterior] + sorted(k for k in posterior if k not in order)
    counted = sum(votes.values())
    by_rank = {c["rank"]: c for c in candidates}
    product = by_rank.get(int(label)) if label.isdigit() else None
    labels = {}
    for attribute in filters.attributes_for(kind):
        labels[attribute] = {
            "label": label,
            "product": product["product"] if product else None,
            "sku": product["sku"] if product else None,
            "posterior": {k: round(float(posterior[k]), 6) for k in keys},
            "confidence": round(float(confidence), 6),
            "answer_count": answer_count,
            "agreement": round(votes.get(label, 0) / counted, 6) if counted else None,
            "provenance": provenance,
            "model_version": model_name if provenance == "model" else None,
            "is_contested": provenance == "human" and confidence < target,
            "settled_at": sql.ts(settled_at),
        }
    photo = sql.uuid(photo_uuid)
    return {
        "task": sql.uuid(task_uuid),
        "campaign": slug,
        "kind": kind,
        "photo": photo,
        "photo_sha256": photo_sha256,
        "image_path": image,
        "image_url": media_url + image,
        "split": split_of(photo),
        "candidates": candidates,
        # The matching head that withheld the photo's suggestions (people saw no candidates), or None.
        "suggestions_withheld_by": withheld_by,
        "labels": labels,
    }


def annotator_rows(filters: ExportFilters) -> Iterator[dict]:
    """Reliability of every annotator in the exported campaigns (AnnotatorStats from the last full
    consensus recompute), pseudonymised, ordered by campaign then pseudonym."""
    qs = AnnotatorStats.objects.filter(campaign__kind__in=[k for k in ATTRIBUTES_BY_KIND if filters.attributes_for(k)])
    if filters.campaigns:
        qs = qs.filter(campaign__slug__in=filters.campaigns)
    rows = []
    for stats in qs.select_related("campaign").iterator(chunk_size=CHUNK):
        rows.append(
            {
                "annotator": annotator_pseudonym(stats.annotator_id),
                "campaign": stats.campaign.slug,
                "answer_count": stats.answer_count,
                "too_fast_count": stats.too_fast_count,
                "gold_answer_count": stats.gold_answer_count,
                "gold_correct_count": stats.gold_correct_count,
                "gold_accuracy": None if stats.gold_accuracy is None else round(stats.gold_accuracy, 6),
                "agreement": None if stats.agreement is None else round(stats.agreement, 6),
                "reliability": None if stats.reliability is None else round(stats.reliability, 6),
                "median_duration_ms": stats.median_duration_ms,
                "flags": sorted(stats.flags or []),
                "is_paused": stats.is_paused,
            }
        )
    # Annotators number in the thousands at most; sorting them in memory is fine.
    rows.sort(key=lambda r: (r["campaign"], r["annotator"]))
    yield from rows


def campaign_labels(filters: ExportFilters) -> dict[str, list[str]]:
    """Label space of each exported campaign, {slug: labels}."""
    qs = Campaign.objects.filter(kind__in=[k for k in ATTRIBUTES_BY_KIND if filters.attributes_for(k)])
    if filters.campaigns:
        qs = qs.filter(slug__in=filters.campaigns)
    return {c.slug: c.labels() for c in qs.order_by("slug")}
