from django.urls import path

from . import api

urlpatterns = [
    path("campaigns/<slug:slug>/next-task", api.NextTaskView.as_view(), name="api-next-task"),
    path("tasks/<uuid:uuid>/answers", api.AnswerCreateView.as_view(), name="api-answer-create"),
    path("tasks/<uuid:uuid>/gold", api.GoldView.as_view(), name="api-task-gold"),
]
