"""Models as data: versions of trained or pretrained networks, and the embeddings they made."""

import uuid

from django.db import models


class ModelVersion(models.Model):
    """A trained or pretrained network: its config, metrics, checkpoint and place in the registry.

    Tagging models are trained by the learning loop (TrainingRun); at most one per scope (the
    campaign it serves, "campaign:<slug>") is ACTIVE. A CANDIDATE becomes active only when it beats
    the active one on the held-out set (mlcore.training.candidate_promote); the previous one is then
    RETIRED and can be rolled back to."""

    class Kind(models.TextChoices):
        EMBEDDING = "embedding", "Image embedding (matching)"
        TAGGING = "tagging", "Attribute tagging"
        MATCHING = "matching", "Matching head (photo to product, fine-tuned)"
        BACKBONE = "backbone", "Matching CNN (trained on the catalog and verified matches)"

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        CANDIDATE = "candidate", "Candidate"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.EMBEDDING)
    backbone = models.CharField(max_length=80)
    image_size_px = models.PositiveIntegerField()
    embedding_dim = models.PositiveIntegerField()
    weights_path = models.CharField(max_length=500, blank=True)
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    # What the model serves: "campaign:<slug>" for a tagging model; "" for a pretrained embedding.
    scope = models.CharField(max_length=200, blank=True)
    # The frozen dataset snapshot it was trained on (annotate.ExportSnapshot.uuid; a uuid, not a
    # foreign key: mlcore does not depend on annotate).
    snapshot_uuid = models.UUIDField(null=True, blank=True)
    checkpoint_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name"], name="mlcore_modelversion_unique_name"),
            models.UniqueConstraint(
                fields=["kind", "scope"],
                condition=models.Q(status="active", kind__in=["tagging", "matching", "backbone"]),
                name="mlcore_modelversion_one_active_trained_model_per_scope",
            ),
        ]

    def __str__(self):
        return self.name


class TrainingRun(models.Model):
    """One retrain of the learning loop (mlcore.training.training_run_execute, Celery queue gpu):
    reads a frozen snapshot, trains, and leaves a CANDIDATE ModelVersion that is promoted only if it
    beats the active one. Progress per epoch is written here (history), with a checkpoint to resume
    from after a killed worker."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=20, choices=ModelVersion.Kind.choices, default=ModelVersion.Kind.TAGGING)
    scope = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    reason = models.CharField(max_length=200, blank=True, help_text="What started it: new labels, daily, by hand.")
    snapshot_uuid = models.UUIDField(null=True, blank=True)
    snapshot_path = models.CharField(max_length=500, blank=True)
    config = models.JSONField(default=dict, blank=True)
    epoch = models.PositiveIntegerField(default=0)
    epochs = models.PositiveIntegerField(default=0)
    # [{"epoch", "train_loss", "val_loss", "val_accuracy": {attribute: accuracy}, "seconds"}]
    history = models.JSONField(default=list, blank=True)
    checkpoint_path = models.CharField(max_length=500, blank=True)
    device = models.CharField(max_length=40, blank=True)
    rows_per_s = models.FloatField(null=True, blank=True)
    candidate = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    promoted = models.BooleanField(default=False)
    decision = models.TextField(blank=True, help_text="Why the candidate was or was not promoted.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"training run {self.uuid} ({self.scope}, {self.status})"


class EmbeddingRun(models.Model):
    """One batch job embedding every product or photo that lacks an embedding for a model version."""

    class Target(models.TextChoices):
        PRODUCTS = "products", "Products"
        PHOTOS = "photos", "Photos"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="embedding_runs")
    target = models.CharField(max_length=20, choices=Target.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    total_count = models.PositiveIntegerField(default=0)
    done_count = models.PositiveIntegerField(default=0)
    skipped_count = models.PositiveIntegerField(default=0)
    images_per_s = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"embedding run {self.uuid} ({self.target}, {self.status})"


class ProductEmbedding(models.Model):
    product = models.ForeignKey("catalog.Product", on_delete=models.CASCADE, related_name="embeddings")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    vector = models.BinaryField()  # float32 little-endian, L2-normalised, model_version.embedding_dim values
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_version", "product"], name="mlcore_productembedding_unique"),
        ]

    def __str__(self):
        return f"embedding of product {self.product_id} by model version {self.model_version_id}"


class PhotoEmbedding(models.Model):
    photo = models.ForeignKey("catalog.Photo", on_delete=models.CASCADE, related_name="embeddings")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    vector = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_version", "photo"], name="mlcore_photoembedding_unique"),
        ]

    def __str__(self):
        return f"embedding of photo {self.photo_id} by model version {self.model_version_id}"


class AttributePrediction(models.Model):
    """A tagging model's prediction of one attribute of one product: pre-fills the tagging form
    (the tagger confirms or corrects it). `value` as in annotate.AttributeAnswer; confidence in [0, 1].

    The category attribute (a distribution over the master taxonomy's leaves) also gets a back-off
    when its leaf is below the auto-accept threshold (mlcore.nn.tagging.hierarchical_backoff):
    `backoff_path` is the deepest taxonomy node that reaches it (a TaxonomyNode.path, "Shoes") and
    `backoff_confidence` its probability in [0, 1]. Both are empty when the leaf stands (confident,
    another attribute, or no node better than the leaf): a non-empty `backoff_path` means "backed
    off"; the tagging page then asks for the leaf instead of pre-selecting `value`."""

    product = models.ForeignKey("catalog.Product", on_delete=models.CASCADE, related_name="attribute_predictions")
    attribute = models.ForeignKey("catalog.Attribute", on_delete=models.CASCADE, related_name="+")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    value = models.CharField(max_length=500, blank=True)
    confidence = models.FloatField()
    backoff_path = models.CharField(max_length=500, blank=True)
    backoff_confidence = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "product", "attribute"], name="mlcore_attributeprediction_unique"
            ),
            # A back-off has both its node and its probability, or neither.
            models.CheckConstraint(
                condition=(models.Q(backoff_path="") & models.Q(backoff_confidence__isnull=True))
                | (
                    ~models.Q(backoff_path="")
                    & models.Q(backoff_confidence__gte=0.0)
                    & models.Q(backoff_confidence__lte=1.0)
                ),
                name="mlcore_attributeprediction_backoff_complete",
            ),
        ]

    def __str__(self):
        return f"{self.attribute_id}={self.value} for product {self.product_id}"
