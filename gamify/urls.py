from django.urls import path

from . import views

app_name = "gamify"
urlpatterns = [
    path("leaderboard/", views.leaderboard, name="leaderboard"),
    path("me/impact/", views.impact, name="impact"),
    path("me/name-visibility", views.name_visibility, name="name-visibility"),
    path("verify/<slug:slug>/sprint", views.sprint, name="sprint"),
    path("sprints/<uuid:uuid>/summary", views.sprint_summary, name="sprint-summary"),
    path("announce/", views.announce, name="announce"),
]
