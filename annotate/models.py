"""Annotation: campaigns, tasks with their model-suggested candidates, leases and answers."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Campaign(models.Model):
    class Kind(models.TextChoices):
        MATCH = "match", "Match photos to products"

    class Status(models.TextChoices):
        PREPARING = "preparing", "Preparing suggestions"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.MATCH)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PREPARING)
    instructions = models.TextField(blank=True)
    answers_per_task = models.PositiveSmallIntegerField(
        default=3, help_text="Answers wanted per task, each from a different annotator."
    )
    lease_seconds = models.PositiveIntegerField(
        default=300, help_text="How long a task stays reserved for the person it was handed to."
    )
    candidate_count = models.PositiveSmallIntegerField(default=3)
    model_version = models.ForeignKey(
        "mlcore.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="campaigns"
    )
    status_detail = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(answers_per_task__gte=1), name="annotate_campaign_answers_positive"),
            models.CheckConstraint(condition=Q(lease_seconds__gte=10), name="annotate_campaign_lease_min"),
        ]

    def __str__(self):
        return self.name


class Task(models.Model):
    """One customer photo with the model's candidate products, waiting for answers."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="tasks")
    photo = models.ForeignKey("catalog.Photo", on_delete=models.PROTECT, related_name="tasks")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    answer_count = models.PositiveSmallIntegerField(default=0)
    # A random position in [0, 2**31); a session's seed picks where in this order it starts.
    shuffle_key = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "photo"], name="annotate_task_unique_photo"),
        ]
        indexes = [
            # task_next_for: open tasks of a campaign walked in shuffle order from a seed.
            models.Index(fields=["campaign", "status", "shuffle_key"], name="annotate_task_queue"),
        ]

    def __str__(self):
        return f"task {self.uuid}"


class TaskCandidate(models.Model):
    """A product the model suggested for a task's photo, at rank 1..candidate_count (1 = best)."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="candidates")
    product = models.ForeignKey("catalog.Product", on_delete=models.PROTECT, related_name="+")
    rank = models.PositiveSmallIntegerField()
    score = models.FloatField(help_text="Cosine similarity in [-1, 1].")

    class Meta:
        ordering = ["rank"]
        constraints = [
            models.UniqueConstraint(fields=["task", "rank"], name="annotate_taskcandidate_unique_rank"),
            models.UniqueConstraint(fields=["task", "product"], name="annotate_taskcandidate_unique_product"),
            models.CheckConstraint(condition=Q(rank__gte=1), name="annotate_taskcandidate_rank_positive"),
        ]

    def __str__(self):
        return f"candidate {self.rank} of task {self.task_id}"


class Lease(models.Model):
    """A task handed to an annotator, reserved for them until expires_at."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="leases")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="annotate_lease_unique"),
        ]
        indexes = [models.Index(fields=["annotator", "expires_at"], name="annotate_lease_by_annotator")]

    def __str__(self):
        return f"lease of task {self.task_id} to user {self.annotator_id} until {self.expires_at:%H:%M:%S}"


class Answer(models.Model):
    """One annotator's response to one task."""

    class Choice(models.TextChoices):
        PRODUCT = "product", "This product"
        NONE = "none", "None of these"
        NOT_A_PRODUCT = "not_a_product", "Not a product"
        UNFIT = "unfit", "Not fit for display"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="answers")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="answers")
    choice = models.CharField(max_length=20, choices=Choice.choices)
    product = models.ForeignKey("catalog.Product", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    duration_ms = models.PositiveIntegerField(help_text="Time from the task appearing to the answer, in ms.")
    idempotency_key = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when the annotator undoes the answer; kept, not deleted, so nothing is lost.
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["task", "annotator"],
                condition=Q(revoked_at__isnull=True),
                name="annotate_answer_one_per_annotator",
            ),
            models.UniqueConstraint(fields=["annotator", "idempotency_key"], name="annotate_answer_idempotency"),
            models.CheckConstraint(
                condition=Q(choice="product", product__isnull=False) | (~Q(choice="product") & Q(product__isnull=True)),
                name="annotate_answer_product_iff_choice_product",
            ),
        ]
        indexes = [models.Index(fields=["annotator", "-created_at"], name="annotate_answer_recent")]

    def __str__(self):
        return f"answer {self.uuid} ({self.choice})"
