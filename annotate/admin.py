from django.contrib import admin, messages

from .models import Answer, Campaign, Lease, Task, TaskCandidate
from .services import campaign_prepare


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "kind", "status", "answers_per_task", "model_version", "created_at"]
    list_filter = ["status", "kind"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["status_detail", "created_at"]
    actions = ["prepare_suggestions"]

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
    list_display = ["uuid", "campaign", "status", "answer_count", "created_at"]
    list_filter = ["campaign", "status"]
    raw_id_fields = ["photo"]
    list_select_related = ["campaign"]
    inlines = [TaskCandidateInline]


@admin.register(Answer)
class AnswerAdmin(admin.ModelAdmin):
    list_display = ["uuid", "task", "annotator", "choice", "duration_ms", "created_at", "revoked_at"]
    list_filter = ["choice", "task__campaign"]
    raw_id_fields = ["task", "product"]
    list_select_related = ["task", "annotator"]
    readonly_fields = ["idempotency_key", "created_at"]


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["task", "annotator", "created_at", "expires_at"]
    raw_id_fields = ["task"]
    list_select_related = ["task", "annotator"]
