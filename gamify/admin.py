"""Admin: profiles (the name preference), badges, sprints; points and tallies read-only (they are
kept by gamify.services, never edited by hand)."""

from django.contrib import admin

from .models import AnswerPoints, BadgeAward, Profile, Sprint, Tally


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "is_name_hidden", "streak_days", "streak_best_days", "streak_last_on", "level_seen"]
    list_filter = ["is_name_hidden"]
    search_fields = ["user__username"]
    raw_id_fields = ["user"]


@admin.register(BadgeAward)
class BadgeAwardAdmin(admin.ModelAdmin):
    list_display = ["user", "badge", "awarded_at", "is_seen"]
    list_filter = ["badge"]
    search_fields = ["user__username"]
    raw_id_fields = ["user"]


@admin.register(Sprint)
class SprintAdmin(admin.ModelAdmin):
    list_display = ["user", "campaign", "duration_s", "started_at", "ends_at", "rank_before"]
    list_select_related = ["user", "campaign"]
    readonly_fields = ["uuid"]
    raw_id_fields = ["user"]


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Tally)
class TallyAdmin(ReadOnly):
    list_display = ["user", "period", "period_start", "team", "points", "answer_count", "settled_count", "agree_count"]
    list_filter = ["period"]
    list_select_related = ["user", "team"]
    search_fields = ["user__username"]
    show_full_result_count = False


@admin.register(AnswerPoints)
class AnswerPointsAdmin(ReadOnly):
    list_display = ["answer_id", "annotator", "campaign", "outcome", "points", "is_match", "answered_on"]
    list_filter = ["outcome"]
    list_select_related = ["annotator", "campaign"]
    show_full_result_count = False
