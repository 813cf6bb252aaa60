from django.urls import path

from . import api

urlpatterns = [
    path("auth/token", api.TokenCreateView.as_view(), name="api-token-create"),
    path("auth/token/revoke", api.TokenRevokeView.as_view(), name="api-token-revoke"),
    path("campaigns/<slug:slug>/next-task", api.NextTaskView.as_view(), name="api-next-task"),
    path("campaigns/<slug:slug>/undo", api.UndoView.as_view(), name="api-undo"),
    path("tasks/<uuid:uuid>/answers", api.AnswerCreateView.as_view(), name="api-answer-create"),
    path("tasks/<uuid:uuid>/skip", api.SkipView.as_view(), name="api-task-skip"),
    path("tasks/<uuid:uuid>/gold", api.GoldView.as_view(), name="api-task-gold"),
    path("exports", api.ExportListCreateView.as_view(), name="api-exports"),
    path("exports/<uuid:uuid>", api.ExportDetailView.as_view(), name="api-export-detail"),
    path("exports/<uuid:uuid>/files/<path:path>", api.ExportFileView.as_view(), name="api-export-file"),
    path("campaigns/<slug:slug>/answers", api.RawAnswersView.as_view(), name="api-raw-answers"),
]
