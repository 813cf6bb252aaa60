from django.urls import path

from . import views

app_name = "annotate"
urlpatterns = [
    path("verify/<slug:slug>/", views.verify, name="verify"),
    path("verify/<slug:slug>/answer", views.verify_answer, name="verify-answer"),
    path("verify/<slug:slug>/undo", views.verify_undo, name="verify-undo"),
]
