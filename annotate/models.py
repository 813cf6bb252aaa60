"""Annotation: campaigns, tasks with their model-suggested candidates, leases and answers."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class ConsensusMethod(models.TextChoices):
    DAWID_SKENE = "dawid_skene", "Dawid-Skene, shrunk per annotator (default)"
    ONE_COIN = "one_coin", "One-coin Dawid-Skene"
    MAJORITY_VOTE = "majority_vote", "Weighted majority vote"


class Campaign(models.Model):
    class Kind(models.TextChoices):
        MATCH = "match", "Match photos to products"
        ATTRIBUTES = "attributes", "Tag product attributes"

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
    # Consensus and dynamic overlap (annotate.consensus).
    consensus_method = models.CharField(
        max_length=20, choices=ConsensusMethod.choices, default=ConsensusMethod.DAWID_SKENE
    )
    confidence_target = models.FloatField(
        default=0.95,
        help_text="A task stops collecting answers once its consensus confidence, in [0, 1], reaches this.",
    )
    overlap_min = models.PositiveSmallIntegerField(default=1, help_text="Answers every task gets, however sure.")
    overlap_max = models.PositiveSmallIntegerField(default=7, help_text="Answers a task gets at most.")
    # Gold tasks (known answers) mixed into each person's queue.
    # Whether a task is gold is drawn server-side (QueueDraw), never from anything the client sends.
    gold_first_count = models.PositiveSmallIntegerField(
        default=5,
        help_text="A new annotator's first answers in this campaign, during which each task is gold with "
        "probability gold_early_rate (not a fixed count: nobody can tell which of them are checks).",
    )
    gold_early_rate = models.FloatField(
        default=0.5, help_text="Chance in [0, 1] that a task is gold during a person's first gold_first_count answers."
    )
    gold_rate = models.FloatField(default=0.05, help_text="Chance in [0, 1] that a later task is gold.")
    gold_min_accuracy = models.FloatField(
        default=0.7, help_text="Smoothed gold accuracy in [0, 1] under which a person is flagged."
    )
    gold_min_answers = models.PositiveSmallIntegerField(
        default=5, help_text="Gold answers a person gives before their gold accuracy can flag them."
    )
    # Spam and speed.
    min_duration_ms = models.PositiveIntegerField(
        default=700, help_text="Answers faster than this (ms) are not counted in consensus and are flagged."
    )
    same_option_run_limit = models.PositiveSmallIntegerField(
        default=25, help_text="This many identical options in a row flags a person."
    )
    paused_vote_weight = models.FloatField(default=0.25, help_text="Vote weight in [0, 1] of a paused person.")
    model_votes = models.BooleanField(
        default=False,
        help_text="The model's top suggestion takes part in consensus as one more voter with a learned "
        "reliability (never counted as a human answer).",
    )
    model_vote_min_score = models.FloatField(
        default=0.5, help_text="The model votes for its top candidate at this cosine score or above, else 'none'."
    )
    consensus_dirty = models.BooleanField(
        default=False, help_text="Answers changed since the last full recompute (Celery beat picks it up)."
    )
    consensus_params = models.JSONField(
        default=dict, blank=True, help_text="Last full recompute: class prior, pooled confusion, model voter."
    )
    consensus_computed_at = models.DateTimeField(null=True, blank=True)
    lease_seconds = models.PositiveIntegerField(
        default=300, help_text="How long a task stays reserved for the person it was handed to."
    )
    candidate_count = models.PositiveSmallIntegerField(default=3)
    # Attribute campaigns (kind "attributes"): what is tagged, the written guide, calibration.
    attributes = models.ManyToManyField("catalog.Attribute", blank=True, related_name="campaigns")
    guide = models.TextField(
        blank=True,
        help_text="The written manual (Markdown), shown beside every task and printable; a tagger opens it "
        "before their first task.",
    )
    calibration_teams = models.ManyToManyField(
        "Team",
        blank=True,
        related_name="calibration_campaigns",
        help_text="Teams that each tag the calibration sample (tasks marked is_calibration).",
    )
    calibration_answers_per_team = models.PositiveSmallIntegerField(
        default=2, help_text="Answers each calibration team gives every calibration task."
    )
    optional_attributes = models.ManyToManyField(
        "catalog.Attribute",
        blank=True,
        related_name="+",
        help_text="Attributes of this campaign a tagger may leave unanswered; every other one is required. "
        "A product completes without its optional attributes settling.",
    )
    personas_per_task = models.PositiveSmallIntegerField(
        default=0,
        help_text="Ask each tagger only this many of the style-persona ratings (attributes persona_*) per "
        "product, the ones the product has fewest ratings of, in a rotation by the tagger's order on it, so "
        "that every persona reaches the agreement report's overlap of 2. 0: ask every persona. Calibration "
        "products always ask every persona (the persona views compare complete vectors).",
    )
    # The learning loop (annotate.learning, attribute campaigns): retrain a tagging model from the
    # settled labels, auto-accept what it is sure of at the target precision, re-rank the rest.
    learning_enabled = models.BooleanField(default=False)
    auto_accept_precision = models.FloatField(
        default=0.98, help_text="The precision auto-accepted labels must reach on held-out labels, in (0, 1]."
    )
    audit_share = models.FloatField(
        default=0.02, help_text="Share of the items the model is sure of that still go to people, to keep measuring."
    )
    retrain_every_labels = models.PositiveIntegerField(
        default=500, help_text="Retrain when this many new labels have settled (and at least daily when any have)."
    )
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
            models.CheckConstraint(
                condition=Q(overlap_min__gte=1, overlap_max__gte=F("overlap_min")),
                name="annotate_campaign_overlap_range",
            ),
            models.CheckConstraint(
                condition=Q(confidence_target__gt=0, confidence_target__lte=1), name="annotate_campaign_target_range"
            ),
            models.CheckConstraint(
                condition=Q(
                    gold_rate__gte=0,
                    gold_rate__lte=1,
                    gold_early_rate__gte=0,
                    gold_early_rate__lte=1,
                    gold_min_accuracy__gte=0,
                    gold_min_accuracy__lte=1,
                    paused_vote_weight__gte=0,
                    paused_vote_weight__lte=1,
                ),
                name="annotate_campaign_unit_interval",
            ),
            models.CheckConstraint(condition=Q(lease_seconds__gte=10), name="annotate_campaign_lease_min"),
        ]

    def __str__(self):
        return self.name

    def labels(self) -> list[str]:
        """The campaign's label space, in class-index order: candidate ranks "1".."candidate_count",
        then the rejections "none", "not_a_product", "unfit"."""
        return [str(rank) for rank in range(1, self.candidate_count + 1)] + ["none", "not_a_product", "unfit"]


class Task(models.Model):
    """One customer photo with the model's candidate products, waiting for answers."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETE = "complete", "Complete"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="tasks")
    # A match task is a photo; an attribute task is a product. Exactly one is set.
    photo = models.ForeignKey("catalog.Photo", null=True, blank=True, on_delete=models.PROTECT, related_name="tasks")
    product = models.ForeignKey(
        "catalog.Product", null=True, blank=True, on_delete=models.PROTECT, related_name="tag_tasks"
    )
    # Part of the calibration sample: every calibration team of the campaign tags it.
    is_calibration = models.BooleanField(default=False)
    # The model was sure of it but it went to people anyway, to measure the auto-accept precision.
    is_audit = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    answer_count = models.PositiveSmallIntegerField(default=0, help_text="Live human answers.")
    # Gold tasks are routed apart and never complete. Never serialised, never rendered: their known
    # answer lives in GoldLabel, which no annotator-facing code reads.
    is_gold = models.BooleanField(default=False)
    # Consensus: the current label (a key of campaign.labels(), "" while unanswered), the posterior
    # over those labels ({label: probability in [0, 1]}) and its maximum, the confidence.
    label = models.CharField(max_length=32, blank=True)
    posterior = models.JSONField(default=dict, blank=True)
    confidence = models.FloatField(default=0.0)
    # 100 x the probability that one more answer settles the task (consensus.services.task_priority):
    # the router serves the highest first. New tasks start at 0 (an answer rarely settles them alone).
    priority = models.PositiveSmallIntegerField(default=0)
    # Set when a model, not people, settled the label (auto-accept, the learning loop); provenance
    # "model" in exports. Null for human consensus and gold.
    label_model_version = models.ForeignKey(
        "mlcore.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Set when a matching head judged the photo to show no catalog product (its top-1 score under the
    # head's rejection threshold) and withdrew its candidates (annotate.learning.matching_apply): the
    # verify page then asks only none / not a product / unfit. Cleared when a later head suggests
    # products again. Kept once people answered, as the record of what they were shown.
    suggestions_withheld_by = models.ForeignKey(
        "mlcore.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Bumped by every answer and undo; the full recompute writes a task only if it is unchanged.
    consensus_version = models.PositiveIntegerField(default=0)
    # A random position in [0, 2**31); a session's seed picks where in this order it starts.
    shuffle_key = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "photo"], name="annotate_task_unique_photo"),
            models.UniqueConstraint(fields=["campaign", "product"], name="annotate_task_unique_product"),
            models.CheckConstraint(
                condition=Q(photo__isnull=False, product__isnull=True) | Q(photo__isnull=True, product__isnull=False),
                name="annotate_task_photo_xor_product",
            ),
            models.CheckConstraint(
                condition=Q(confidence__gte=0, confidence__lte=1), name="annotate_task_confidence_range"
            ),
        ]
        indexes = [
            # task_next_for: the open regular (or gold) tasks of a campaign, highest priority first,
            # then in shuffle order from the session's seed.
            models.Index(
                fields=["campaign", "is_gold", "status", "-priority", "shuffle_key"], name="annotate_task_queue"
            ),
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
        TAGS = "tags", "Attribute tags"  # the values are AttributeAnswer rows

    # The choices of a match task (everything but "tags", which attribute tasks use).
    MATCH_CHOICES = ("product", "none", "not_a_product", "unfit")

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="answers")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="answers")
    choice = models.CharField(max_length=20, choices=Choice.choices)
    product = models.ForeignKey("catalog.Product", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    duration_ms = models.PositiveIntegerField(help_text="Time from the task appearing to the answer, in ms.")
    # The answer as a key of campaign.labels(): the chosen candidate's rank, or the rejection.
    label = models.CharField(max_length=32, default="")
    # Under the campaign's human-speed floor when given: kept, but it counts 0 in consensus.
    is_too_fast = models.BooleanField(default=False)
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


class GoldLabel(models.Model):
    """The known answer of a gold task. Read by consensus and stats only, never by a view or
    serializer an annotator reaches."""

    class Source(models.TextChoices):
        MANUAL = "manual", "Entered by the ML team"
        IMPORT = "import", "Imported"
        DEMO = "demo", "Demo ground truth"

    task = models.OneToOneField(Task, primary_key=True, on_delete=models.CASCADE, related_name="gold")
    label = models.CharField(max_length=32, help_text="A key of the campaign's labels.")
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.MANUAL)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"gold {self.label} for task {self.task_id}"


class AnnotatorStats(models.Model):
    """One annotator's record in one campaign: counts kept up to date on answer, and reliability,
    agreement, gold accuracy and flags from the last full consensus recompute."""

    class Flag(models.TextChoices):
        GOLD_ACCURACY_LOW = "gold_accuracy_low", "Gold accuracy under the campaign's threshold"
        TOO_FAST = "too_fast", "Many answers faster than a person can give them"
        SAME_OPTION_RUN = "same_option_run", "A long run of the same option"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="annotator_stats")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="annotator_stats")
    answer_count = models.PositiveIntegerField(default=0)
    too_fast_count = models.PositiveIntegerField(default=0)
    current_run_label = models.CharField(max_length=32, blank=True)
    current_run_length = models.PositiveIntegerField(default=0)
    longest_run_length = models.PositiveIntegerField(default=0)
    # From the full recompute.
    gold_answer_count = models.PositiveIntegerField(default=0)
    gold_correct_count = models.PositiveIntegerField(default=0)
    # What the person may see of their gold record (consensus.services.gold_reveal): gold answers up to
    # gold_shown_through, which moves only when GOLD_REVEAL_BATCH more gold answers have left the undo
    # window, so no page tells which answer was a check.
    gold_shown_answer_count = models.PositiveIntegerField(default=0)
    gold_shown_correct_count = models.PositiveIntegerField(default=0)
    gold_shown_through = models.DateTimeField(null=True, blank=True)
    agreement_total = models.PositiveIntegerField(default=0, help_text="Answers on tasks with 2+ answers.")
    agreement_count = models.PositiveIntegerField(default=0, help_text="Of those, answers equal to the consensus.")
    reliability = models.FloatField(null=True, blank=True, help_text="Expected accuracy in [0, 1] from consensus.")
    confusion = models.JSONField(
        default=list, blank=True, help_text="K x K rows: P(answers label l | true label k), in campaign.labels() order."
    )
    median_duration_ms = models.PositiveIntegerField(null=True, blank=True)
    flags = models.JSONField(default=list, blank=True)
    is_paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    computed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = verbose_name_plural = "annotator stats"
        constraints = [
            models.UniqueConstraint(fields=["campaign", "annotator"], name="annotate_annotatorstats_unique"),
        ]

    def __str__(self):
        return f"stats of user {self.annotator_id} in campaign {self.campaign_id}"

    GOLD_PRIOR_K = 0.5  # Toloka's skill estimate q = (K + correct) / (2K + total)
    GOLD_REVEAL_BATCH = 5  # gold answers revealed together, at the least

    @property
    def gold_shown_accuracy(self) -> float | None:
        """The smoothed gold accuracy a person may see, in [0, 1]: as gold_accuracy, over the revealed
        gold answers only (gold_shown_*); None before any is revealed."""
        if not self.gold_shown_answer_count:
            return None
        return (self.GOLD_PRIOR_K + self.gold_shown_correct_count) / (
            2 * self.GOLD_PRIOR_K + self.gold_shown_answer_count
        )

    @property
    def gold_accuracy(self) -> float | None:
        """Smoothed gold accuracy in [0, 1], (K + correct) / (2K + total) with K = 0.5 (Toloka's skill
        estimate); None before any gold answer."""
        if not self.gold_answer_count:
            return None
        return (self.GOLD_PRIOR_K + self.gold_correct_count) / (2 * self.GOLD_PRIOR_K + self.gold_answer_count)

    @property
    def agreement(self) -> float | None:
        """Share in [0, 1] of this person's answers on multi-answer tasks that equal the consensus."""
        return self.agreement_count / self.agreement_total if self.agreement_total else None


class Skip(models.Model):
    """A task a person passed over without answering (k on the verify and tagging pages, or the API's
    skip). Their lease was released, so the task went back to the pool for everyone else; for this
    person it comes after every task they have not skipped (services.task_next_for), oldest skip
    first. One row per task and person: skipping again moves it to the back."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="skips")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    skipped_at = models.DateTimeField()

    class Meta:
        # Also the index of the router's "skipped by this person" subquery (annotator first).
        constraints = [models.UniqueConstraint(fields=["annotator", "task"], name="annotate_skip_unique")]

    def __str__(self):
        return f"user {self.annotator_id} skipped task {self.task_id}"


class QueueDraw(models.Model):
    """The server's secret draw for a person's next task in a campaign: whether it is a gold task, and
    where in the gold tasks' shuffle order to pick it. Drawn with the operating system's randomness
    (services.task_next_for) when the previous task is handed out, so the prefetch of the next task
    and the task itself agree; never sent to the client, never derived from anything it sends."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="+")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    is_gold = models.BooleanField()
    gold_key = models.PositiveIntegerField(help_text="Start, in [0, SHUFFLE_SPACE), of the gold pick's rotation.")
    drawn_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "annotator"], name="annotate_queuedraw_unique"),
        ]

    def __str__(self):
        return f"next-task draw of user {self.annotator_id} in campaign {self.campaign_id}"


class ExportSnapshot(models.Model):
    """One immutable, versioned gold-dataset export: its filters, formats, counts and the sha256 of
    every file it wrote under settings.FITCHECK_EXPORTS_ROOT/<uuid>/. Built by the Celery task
    annotate.export_build (annotate.exports.services.export_build)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Queued"
        RUNNING = "running", "Building"
        DONE = "done", "Ready"
        FAILED = "failed", "Failed"

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSON Lines"
        CSV = "csv", "CSV"
        PARQUET = "parquet", "Parquet"
        HF = "hf", "Hugging Face datasets folder"
        CROWDKIT = "crowdkit", "Crowd-Kit raw answers (worker, task, label)"
        LABEL_STUDIO = "label_studio", "Label Studio JSON"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.SlugField(max_length=80, help_text="Snapshots of one name are numbered 1, 2, 3...")
    version = models.PositiveIntegerField()
    schema_version = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    formats = models.JSONField(default=list, help_text="Format values, in the order they were asked for.")
    filters = models.JSONField(default=dict, blank=True, help_text="Normalised filters (exports.filters).")
    include_answers = models.BooleanField(default=False, help_text="Raw answers, annotators pseudonymised.")
    include_reliability = models.BooleanField(default=False, help_text="Per-annotator reliability and flags.")
    embed_images = models.BooleanField(
        default=False,
        help_text="Store the image bytes in the Hugging Face folder (portable, larger) instead of paths under "
        "MEDIA_ROOT.",
    )
    # Progress: items written out of items expected.
    total_count = models.PositiveIntegerField(default=0)
    done_count = models.PositiveIntegerField(default=0)
    item_count = models.PositiveIntegerField(default=0)
    answer_count = models.PositiveIntegerField(default=0)
    annotator_count = models.PositiveIntegerField(default=0)
    files = models.JSONField(
        default=list, blank=True, help_text="[{path, format, size_bytes, sha256}], sorted by path."
    )
    size_bytes = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="annotate_exportsnapshot_unique_version"),
        ]

    def __str__(self):
        return f"{self.name} v{self.version}"

    @property
    def progress(self) -> float:
        """Share of items written, in [0, 1]."""
        if self.status == self.Status.DONE:
            return 1.0
        return min(self.done_count / self.total_count, 1.0) if self.total_count else 0.0


class Team(models.Model):
    """A group of annotators (merchandising, customer experience, contractors): agreement reports
    compare teams, and calibration samples are tagged by several."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    slug = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=120)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class TeamMember(models.Model):
    """A person's team; one team per person, so each answer belongs to one team."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="members")
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_membership")
    joined_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"user {self.user_id} in {self.team_id}"


class AttributeAnswer(models.Model):
    """One attribute's value in a tagger's answer (Answer.choice "tags") to an attribute task.

    `value`: an option value or "cant_tell" (single choice); the selected option values joined by "|"
    in the attribute's option order, "" for none (multi choice); "1".."5" (ordinal)."""

    answer = models.ForeignKey(Answer, on_delete=models.CASCADE, related_name="attribute_answers")
    attribute = models.ForeignKey("catalog.Attribute", on_delete=models.PROTECT, related_name="+")
    value = models.CharField(max_length=500, blank=True)
    # The model's suggestion that pre-filled the form, if any; the tagger confirmed it when value equals it.
    suggested_value = models.CharField(max_length=500, blank=True)
    suggestion_confidence = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["answer", "attribute"], name="annotate_attributeanswer_unique"),
        ]

    def __str__(self):
        return f"{self.attribute_id}={self.value} in answer {self.answer_id}"

    @property
    def was_confirmed(self) -> bool | None:
        """True: the tagger kept the model's suggestion; False: corrected it; None: no suggestion."""
        return None if not self.suggested_value else self.value == self.suggested_value


class AttributeLabel(models.Model):
    """The consensus of one attribute of one attribute task (annotate.tagging): the label (a value as
    in AttributeAnswer), its posterior ({value: probability in [0, 1]}; per option P(selected) for
    multi choice), confidence in [0, 1], the answers counted and whether it has settled."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="attribute_labels")
    attribute = models.ForeignKey("catalog.Attribute", on_delete=models.PROTECT, related_name="+")
    label = models.CharField(max_length=500, blank=True)
    posterior = models.JSONField(default=dict, blank=True)
    confidence = models.FloatField(default=0.0)
    answer_count = models.PositiveIntegerField(default=0)
    is_settled = models.BooleanField(default=False)
    # Set when the model, not people, settled the label (auto-accept): provenance "model".
    model_version = models.ForeignKey(
        "mlcore.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "attribute"], name="annotate_attributelabel_unique"),
            models.CheckConstraint(
                condition=Q(confidence__gte=0, confidence__lte=1), name="annotate_attributelabel_confidence_range"
            ),
        ]

    def __str__(self):
        return f"{self.attribute_id}={self.label} on task {self.task_id}"


class GuideRead(models.Model):
    """When a person opened a campaign's guide; the tagging page wants one before the first task."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="guide_reads")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    read_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "user"], name="annotate_guideread_unique")]

    def __str__(self):
        return f"user {self.user_id} read the guide of campaign {self.campaign_id}"


class AttributeReliability(models.Model):
    """One tagger's reliability on one attribute of an attribute campaign, from the last full
    recompute (annotate.tagging.tag_consensus_recompute). Used as the person's weight (ordinal,
    multi choice) or one-coin accuracy (single choice) by the per-answer consensus update.

    accuracy is in [0, 1]: single choice, the one-coin Dawid-Skene accuracy; ordinal, the smoothed
    share of ratings within one step of the consensus; multi choice, the smoothed share of options
    the person got right (selected or not) against the consensus."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="attribute_reliability")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    attribute = models.ForeignKey("catalog.Attribute", on_delete=models.CASCADE, related_name="+")
    answer_count = models.PositiveIntegerField(default=0, help_text="Counted answers (too-fast ones excluded).")
    agreement_total = models.PositiveIntegerField(default=0, help_text="Answers on products with 2+ answers.")
    agreement_count = models.PositiveIntegerField(default=0, help_text="Of those, answers agreeing with consensus.")
    accuracy = models.FloatField()
    computed_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "attribute reliabilities"
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "annotator", "attribute"], name="annotate_attributereliability_unique"
            ),
            models.CheckConstraint(
                condition=Q(accuracy__gte=0, accuracy__lte=1), name="annotate_attributereliability_accuracy_range"
            ),
        ]

    def __str__(self):
        return f"reliability of user {self.annotator_id} on attribute {self.attribute_id}: {self.accuracy:.3f}"
