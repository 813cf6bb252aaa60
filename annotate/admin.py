from django import forms
from django.contrib import admin, messages

from .models import (
    AnnotatorStats,
    Answer,
    Campaign,
    ExportSnapshot,
    GoldLabel,
    Lease,
    Task,
    TaskCandidate,
    Team,
    TeamMember,
)
from .services import campaign_prepare


class CampaignAdminForm(forms.ModelForm):
    """The campaign form, with the checks that span the attribute lists: optional attributes are
    some of the campaign's, and sampled personas can reach the agreement report's overlap."""

    class Meta:
        model = Campaign
        fields = "__all__"  # noqa: DJ007 (the admin decides the fields; this form only adds clean())

    def clean(self):
        from .agreement import PAIRABLE_MIN_RATINGS
        from .tagging import is_persona

        data = super().clean()
        attributes = list(data.get("attributes") or [])
        optional = set(data.get("optional_attributes") or [])
        if optional - set(attributes):
            self.add_error("optional_attributes", "Optional attributes must be among the campaign's attributes.")
        k = data.get("personas_per_task") or 0
        personas = [a for a in attributes if is_persona(a)]
        overlap_max = data.get("overlap_max") or 0
        if 0 < k < len(personas) and overlap_max * k < PAIRABLE_MIN_RATINGS * len(personas):
            self.add_error(
                "personas_per_task",
                f"With {len(personas)} personas, {k} per tagger and overlap_max {overlap_max}, a persona gets at "
                f"most {overlap_max * k // len(personas)} ratings per product; the agreement report needs "
                f"{PAIRABLE_MIN_RATINGS}. Raise personas_per_task or overlap_max to at least "
                f"{-(-PAIRABLE_MIN_RATINGS * len(personas) // k)}.",
            )
        return data


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "kind",
        "status",
        "consensus_method",
        "confidence_target",
        "overlap_min",
        "overlap_max",
        "model_version",
        "created_at",
    ]
    list_filter = ["status", "kind"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["attributes", "optional_attributes", "calibration_teams"]
    readonly_fields = ["status_detail", "created_at", "consensus_dirty", "consensus_params", "consensus_computed_at"]
    actions = ["prepare_suggestions"]
    form = CampaignAdminForm

    @admin.action(description="Compute suggestions for photos without a task (queues the worker)")
    def prepare_suggestions(self, request, queryset):
        for campaign in queryset.exclude(model_version=None):
            campaign_prepare(campaign=campaign)
        self.message_user(request, "Queued. The verify page shows the progress.", messages.SUCCESS)


class TaskCandidateInline(admin.TabularInline):
    model = TaskCandidate
    extra = 0
    raw_id_fields = ["product"]
    readonly_fields = ["rank", "score"]


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["uuid", "campaign", "status", "is_gold", "answer_count", "label", "confidence", "created_at"]
    list_filter = ["campaign", "status", "is_gold"]
    readonly_fields = [
        "label",
        "posterior",
        "confidence",
        "priority",
        "consensus_version",
        "label_model_version",
        "suggestions_withheld_by",
    ]
    raw_id_fields = ["photo"]
    list_select_related = ["campaign"]
    inlines = [TaskCandidateInline]


@admin.register(Answer)
class AnswerAdmin(admin.ModelAdmin):
    list_display = [
        "uuid",
        "task",
        "annotator",
        "choice",
        "label",
        "duration_ms",
        "is_too_fast",
        "created_at",
        "revoked_at",
    ]
    list_filter = ["choice", "task__campaign"]
    raw_id_fields = ["task", "product"]
    list_select_related = ["task", "annotator"]
    readonly_fields = ["idempotency_key", "created_at"]


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["task", "annotator", "created_at", "expires_at"]
    raw_id_fields = ["task"]
    list_select_related = ["task", "annotator"]


@admin.register(GoldLabel)
class GoldLabelAdmin(admin.ModelAdmin):
    """Gold answers are entered through the API (PUT /api/v1/tasks/<uuid>/gold) so that the task's
    is_gold flag and consensus follow; here they are read-only."""

    list_display = ["task", "label", "source", "created_by", "created_at"]
    list_filter = ["source", "task__campaign"]
    list_select_related = ["task", "created_by"]
    readonly_fields = ["task", "label", "source", "created_by", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(AnnotatorStats)
class AnnotatorStatsAdmin(admin.ModelAdmin):
    list_display = [
        "annotator",
        "campaign",
        "answer_count",
        "gold_answer_count",
        "gold_correct_count",
        "reliability",
        "flags",
        "is_paused",
    ]
    list_filter = ["campaign", "is_paused"]
    list_select_related = ["annotator", "campaign"]
    readonly_fields = [f.name for f in AnnotatorStats._meta.fields if f.name not in ("id", "is_paused")]


@admin.register(ExportSnapshot)
class ExportSnapshotAdmin(admin.ModelAdmin):
    """Read-only: a snapshot is immutable. New ones come from the exports page or the API."""

    list_display = ["name", "version", "status", "item_count", "answer_count", "size_bytes", "created_by", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "uuid"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class TeamMemberInline(admin.TabularInline):
    model = TeamMember
    extra = 1
    raw_id_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """Teams of annotators (agreement reports compare them; calibration samples are tagged by several)."""

    list_display = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [TeamMemberInline]
