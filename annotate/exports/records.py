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
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from urllib.parse import urljoin

from django.conf import settings
from django.db.models import Count, F, Q
from django.utils.dateparse import parse_datetime

from ..models import AnnotatorStats, Answer, Campaign, Task, TaskCandidate

SCHEMA_VERSION = 1
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
    """A stable pseudonym for an annotator: "a-" and 16 hex digits of HMAC-SHA256 under SECRET_KEY.
    The same person has the same pseudonym in every export (so reliability joins answers), and it
    cannot be turned back into a user without the server's secret."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"fitcheck-annotator:{annotator_id}".encode(), hashlib.sha256)
    return "a-" + digest.hexdigest()[:16]


def split_of(key: str) -> str:
    """The stable train/validation/test split of an item: sha256 of `key` (the photo uuid), first 8
    bytes as an integer, modulo 1000, against SPLITS (80/10/10)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 1000
    return next(name for name, upper in SPLITS if bucket < upper)


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


@dataclass
class Chunk:
    """One chunk of items: their records, in export order, and (when asked for) their live answers
    as rows, grouped by the item's task uuid in answer order."""

    records: list[dict]
    answers: dict[str, list[dict]] = field(default_factory=dict)


_ITEM_FIELDS = (
    "pk",
    "uuid",
    "campaign_id",
    "campaign__slug",
    "campaign__kind",
    "campaign__confidence_target",
    "photo__uuid",
    "photo__sha256",
    "photo__image",
    "status",
    "label",
    "posterior",
    "confidence",
    "answer_count",
    "is_gold",
    "gold__label",
    "gold__created_at",
    "completed_at",
    "label_model_version__name",
)


def chunks(filters: ExportFilters, *, with_answers: bool) -> Iterator[Chunk]:
    """The export's items in chunks of CHUNK, keyset-paginated by id (three queries per chunk, so
    memory stays flat on SQLite and PostgreSQL alike). Reads see one snapshot only when the caller
    holds a read transaction (exports.services.export_build does).

    Yields:
        Chunk: records (dicts shaped as in docs/exports.md) and, if `with_answers`, answer rows:
        {"answer", "task", "campaign", "annotator" (pseudonym), "choice", "label", "product",
        "duration_ms", "is_too_fast", "created_at"}. Revoked (undone) answers are left out.
    """
    media_url = urljoin(settings.FITCHECK_PUBLIC_URL.rstrip("/") + "/", settings.MEDIA_URL.lstrip("/"))
    base = items_queryset(filters)
    pseudonyms: dict[int, str] = {}
    last = 0
    while True:
        rows = list(base.filter(pk__gt=last).values_list(*_ITEM_FIELDS)[:CHUNK])
        if not rows:
            return
        last = rows[-1][0]
        ids = [r[0] for r in rows]
        candidates = defaultdict(list)
        for task_id, rank, product, sku, retailer, title, score in (
            TaskCandidate.objects.filter(task_id__in=ids)
            .order_by("task_id", "rank")
            .values_list(
                "task_id", "rank", "product__uuid", "product__sku", "product__retailer__slug", "product__title", "score"
            )
        ):
            candidates[task_id].append(
                {
                    "rank": rank,
                    "product": str(product),
                    "sku": sku,
                    "retailer": retailer,
                    "title": title,
                    "score": round(score, 6),
                }
            )
        votes: dict[int, dict[str, int]] = defaultdict(dict)
        answers: dict[int, list[dict]] = defaultdict(list)
        live = Answer.objects.filter(task_id__in=ids, revoked_at__isnull=True)
        if with_answers:
            for (
                a_uuid,
                task_id,
                annotator_id,
                choice,
                label,
                product,
                duration_ms,
                is_too_fast,
                created_at,
            ) in live.order_by("task_id", "pk").values_list(
                "uuid",
                "task_id",
                "annotator_id",
                "choice",
                "label",
                "product__uuid",
                "duration_ms",
                "is_too_fast",
                "created_at",
            ):
                if annotator_id not in pseudonyms:
                    pseudonyms[annotator_id] = annotator_pseudonym(annotator_id)
                answers[task_id].append(
                    {
                        "answer": str(a_uuid),
                        "annotator": pseudonyms[annotator_id],
                        "choice": choice,
                        "label": label,
                        "product": str(product) if product else None,
                        "duration_ms": duration_ms,
                        "is_too_fast": is_too_fast,
                        "created_at": _iso(created_at),
                    }
                )
                if not is_too_fast:
                    votes[task_id][label] = votes[task_id].get(label, 0) + 1
        else:
            for task_id, label, n in (
                live.filter(is_too_fast=False).values_list("task_id", "label").annotate(n=Count("pk"))
            ):
                votes[task_id][label] = n
        chunk = Chunk(records=[])
        for row in rows:
            record = _record(row, candidates[row[0]], votes.get(row[0], {}), filters, media_url)
            chunk.records.append(record)
            if with_answers:
                task_rows = answers.get(row[0], [])
                for answer in task_rows:
                    answer["task"] = record["task"]
                    answer["campaign"] = record["campaign"]
                chunk.answers[record["task"]] = task_rows
        yield chunk


def _record(row: tuple, candidates: list[dict], votes: dict[str, int], filters: ExportFilters, media_url: str) -> dict:
    (
        _pk,
        task_uuid,
        _campaign_id,
        slug,
        kind,
        target,
        photo_uuid,
        photo_sha256,
        image,
        _status,
        label,
        posterior,
        confidence,
        answer_count,
        is_gold,
        gold_label,
        gold_at,
        completed_at,
        model_name,
    ) = row
    gold = is_gold and gold_label is not None
    if gold:
        label, posterior, confidence, provenance, settled_at = gold_label, {gold_label: 1.0}, 1.0, "gold", gold_at
    else:
        provenance = "model" if model_name else "human"
        settled_at = completed_at
    counted = sum(votes.values())
    by_rank = {c["rank"]: c for c in candidates}
    product = by_rank.get(int(label)) if label.isdigit() else None
    labels = {}
    for attribute in filters.attributes_for(kind):
        labels[attribute] = {
            "label": label,
            "product": product["product"] if product else None,
            "sku": product["sku"] if product else None,
            "posterior": {k: round(float(p), 6) for k, p in posterior.items()},
            "confidence": round(float(confidence), 6),
            "answer_count": answer_count,
            "agreement": round(votes.get(label, 0) / counted, 6) if counted else None,
            "provenance": provenance,
            "model_version": model_name if provenance == "model" else None,
            "is_contested": provenance == "human" and confidence < target,
            "settled_at": _iso(settled_at),
        }
    photo = str(photo_uuid)
    return {
        "task": str(task_uuid),
        "campaign": slug,
        "kind": kind,
        "photo": photo,
        "photo_sha256": photo_sha256,
        "image_path": image,
        "image_url": media_url + image,
        "split": split_of(photo),
        "candidates": candidates,
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
