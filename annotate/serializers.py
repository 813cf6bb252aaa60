"""DRF serializers: shape the task payload, validate answer input. Writes go through services."""

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import Answer, ExportSnapshot


def _absolute(request, url: str) -> str:
    return request.build_absolute_uri(url) if request is not None else url


class ProductBriefSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    sku = serializers.CharField()
    title = serializers.CharField()
    retailer = serializers.CharField(source="retailer.name")
    image_url = serializers.SerializerMethodField()

    def get_image_url(self, product) -> str | None:
        images = list(product.images.all())  # prefetched, ordered by position
        return _absolute(self.context.get("request"), images[0].image.url) if images else None


class CandidateSerializer(serializers.Serializer):
    rank = serializers.IntegerField(help_text="1 = the model's best guess.")
    product = ProductBriefSerializer()


class PhotoSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    image_url = serializers.SerializerMethodField()
    width_px = serializers.IntegerField()
    height_px = serializers.IntegerField()
    caption = serializers.CharField()
    source = serializers.CharField()

    def get_image_url(self, photo) -> str:
        return _absolute(self.context.get("request"), photo.image.url)


class TaskSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    campaign = serializers.CharField(source="campaign.slug")
    photo = PhotoSerializer()
    candidates = CandidateSerializer(
        many=True, source="candidates.all", help_text="Empty when a matching head withheld the suggestions."
    )
    suggestions_withheld_by = serializers.CharField(
        source="suggestions_withheld_by.name",
        allow_null=True,
        default=None,
        help_text="The matching head that found no catalog product in the photo and withheld its suggestions.",
    )
    choices = serializers.SerializerMethodField()
    lease_expires_at = serializers.DateTimeField(allow_null=True)

    def get_choices(self, task) -> list[str]:
        """The answers this task takes: "product" only when it has candidates to pick from."""
        if not task.candidates.all():
            return [c for c in Answer.MATCH_CHOICES if c != Answer.Choice.PRODUCT]
        return list(Answer.MATCH_CHOICES)


class AnswerInputSerializer(serializers.Serializer):
    choice = serializers.ChoiceField(choices=Answer.MATCH_CHOICES)
    product = serializers.UUIDField(required=False, allow_null=True, help_text="Required when choice is product.")
    duration_ms = serializers.IntegerField(min_value=0, help_text="Time the task was on screen, in ms.")
    idempotency_key = serializers.CharField(
        max_length=80,
        required=False,
        help_text="Or the Idempotency-Key header. The same key again returns the same answer.",
    )


class AnswerSerializer(serializers.ModelSerializer):
    task = serializers.UUIDField(source="task.uuid")
    product = serializers.UUIDField(source="product.uuid", allow_null=True, default=None)

    class Meta:
        model = Answer
        fields = ["uuid", "task", "choice", "product", "duration_ms", "idempotency_key", "created_at"]


class SkipSerializer(serializers.Serializer):
    task = serializers.UUIDField(source="task.uuid")
    skipped_at = serializers.DateTimeField(
        help_text="The task comes back to you only after every task you did not skip."
    )


class ConflictSerializer(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    """Every error body that is not a per-field validation error: a stable machine `code`
    (not_authenticated, permission_denied, not_found, parse_error, unsupported_media_type, ...)
    and a `detail` for people."""

    code = serializers.CharField()
    detail = serializers.CharField()


class GoldInputSerializer(serializers.Serializer):
    choice = serializers.ChoiceField(choices=Answer.MATCH_CHOICES)
    product = serializers.UUIDField(required=False, allow_null=True, help_text="Required when choice is product.")


class GoldSerializer(serializers.Serializer):
    task = serializers.UUIDField(source="task.uuid")
    label = serializers.CharField(help_text="A candidate rank ('1'..'3') or none / not_a_product / unfit.")
    source = serializers.CharField()
    created_at = serializers.DateTimeField()


# -- API tokens --------------------------------------------------------------------------------------


class TokenCreateInputSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Token <token>`. Shown once; only a hash is kept.")
    expiry = serializers.DateTimeField(help_text="After this the token is rejected (401).")


# -- exports -----------------------------------------------------------------------------------------


class ExportFiltersSerializer(serializers.Serializer):
    """Filters of an export; all optional (see annotate.exports.records.ExportFilters)."""

    campaigns = serializers.ListField(child=serializers.SlugField(), required=False, help_text="Slugs; none: all.")
    attributes = serializers.ListField(child=serializers.CharField(), required=False, help_text="None: all.")
    min_confidence = serializers.FloatField(required=False, min_value=0, max_value=1)
    provenance = serializers.ListField(
        child=serializers.ChoiceField(choices=["gold", "human", "model"]), required=False, help_text="None: all."
    )
    settled_from = serializers.CharField(required=False, help_text="ISO 8601 date or datetime, inclusive.")
    settled_to = serializers.CharField(required=False, help_text="ISO 8601 date or datetime, inclusive.")
    exclude_contested = serializers.BooleanField(required=False)


@extend_schema_field(
    {
        "type": "array",
        "items": {"type": "string", "enum": list(ExportSnapshot.Format.values)},
        "minItems": 1,
        "uniqueItems": True,
    }
)
class _FormatListField(serializers.ListField):
    """The export's formats: at least one, each once (export_create refuses a repeated one)."""


class ExportCreateSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=80)
    formats = _FormatListField(child=serializers.ChoiceField(choices=ExportSnapshot.Format.choices), allow_empty=False)
    filters = ExportFiltersSerializer(required=False)
    include_answers = serializers.BooleanField(default=False)
    include_reliability = serializers.BooleanField(default=False)
    embed_images = serializers.BooleanField(
        default=False, help_text="Image bytes inside the Hugging Face folder (portable), not paths on this server."
    )


class ExportFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    format = serializers.CharField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    url = serializers.CharField(help_text="Download URL (same authentication).")


class ExportSnapshotSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True, help_text="Null when built by a command."
    )
    progress = serializers.FloatField(help_text="Share of items written, in [0, 1].")
    files = serializers.SerializerMethodField()

    class Meta:
        model = ExportSnapshot
        fields = [
            "uuid",
            "name",
            "version",
            "schema_version",
            "status",
            "formats",
            "filters",
            "include_answers",
            "include_reliability",
            "embed_images",
            "progress",
            "total_count",
            "done_count",
            "item_count",
            "answer_count",
            "annotator_count",
            "size_bytes",
            "files",
            "error",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]

    @extend_schema_field(ExportFileSerializer(many=True))
    def get_files(self, snapshot) -> list[dict]:
        request = self.context.get("request")
        return [
            {
                **f,
                "url": _absolute(
                    request, reverse("api-export-file", kwargs={"uuid": snapshot.uuid, "path": f["path"]})
                ),
            }
            for f in snapshot.files
        ]


class ExportSnapshotPageSerializer(serializers.Serializer):
    """One page of GET /exports (cursor pagination, newest first; for the schema, the paginator
    writes the page)."""

    next = serializers.URLField(allow_null=True, help_text="The next page's URL; null on the last page.")
    previous = serializers.URLField(allow_null=True, help_text="The previous page's URL; null on the first.")
    results = ExportSnapshotSerializer(many=True)


class RawAnswerSerializer(serializers.Serializer):
    """One row of the raw answers endpoint (for the schema; rows are streamed, not serialised)."""

    answer = serializers.UUIDField()
    task = serializers.UUIDField()
    campaign = serializers.SlugField()
    annotator = serializers.CharField(help_text="Pseudonym, stable across exports.")
    choice = serializers.CharField()
    label = serializers.CharField()
    values = serializers.DictField(
        allow_null=True,
        help_text="Attributes campaigns: {attribute slug: value} (a multi choice a list of options); "
        "null for match campaigns.",
    )
    product = serializers.UUIDField(allow_null=True)
    duration_ms = serializers.IntegerField()
    is_too_fast = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class RawAnswerPageSerializer(serializers.Serializer):
    results = RawAnswerSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="URL of the next page; null on the last one.")
