"""DRF serializers: shape the task payload, validate answer input. Writes go through services."""

from rest_framework import serializers

from .models import Answer


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
    candidates = CandidateSerializer(many=True, source="candidates.all")
    choices = serializers.SerializerMethodField()
    lease_expires_at = serializers.DateTimeField(allow_null=True)

    def get_choices(self, task) -> list[str]:
        return list(Answer.Choice.values)


class AnswerInputSerializer(serializers.Serializer):
    choice = serializers.ChoiceField(choices=Answer.Choice.choices)
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


class ConflictSerializer(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()


class GoldInputSerializer(serializers.Serializer):
    choice = serializers.ChoiceField(choices=Answer.Choice.choices)
    product = serializers.UUIDField(required=False, allow_null=True, help_text="Required when choice is product.")


class GoldSerializer(serializers.Serializer):
    task = serializers.UUIDField(source="task.uuid")
    label = serializers.CharField(help_text="A candidate rank ('1'..'3') or none / not_a_product / unfit.")
    source = serializers.CharField()
    created_at = serializers.DateTimeField()
