from django.urls import path

from . import learning_views, tag_views, views

app_name = "annotate"
urlpatterns = [
    path("verify/<slug:slug>/", views.verify, name="verify"),
    path("verify/<slug:slug>/answer", views.verify_answer, name="verify-answer"),
    path("verify/<slug:slug>/undo", views.verify_undo, name="verify-undo"),
    path("verify/<slug:slug>/skip", views.verify_skip, name="verify-skip"),
    path("me/stats/", views.my_stats, name="my-stats"),
    path("campaigns/<slug:slug>/annotators/", views.campaign_annotators, name="campaign-annotators"),
    path("campaigns/<slug:slug>/annotators/<str:username>/pause", views.annotator_pause, name="annotator-pause"),
    path("campaigns/<slug:slug>/consensus/recompute", views.consensus_recompute, name="consensus-recompute"),
    path("campaigns/<slug:slug>/agreement/", views.agreement_report, name="agreement-report"),
    path("exports/", views.exports, name="exports"),
    path("exports/<uuid:uuid>/", views.export_detail, name="export-detail"),
    path("exports/<uuid:uuid>/files/<path:path>", views.export_download, name="export-download"),
    path("exports/<uuid:uuid>/download.zip", views.export_download_all, name="export-download-all"),
    # The learning loop (annotate.learning_views).
    path("learning/", learning_views.learning_page, name="learning"),
    path("learning/<slug:slug>/retrain", learning_views.learning_retrain, name="learning-retrain"),
    path("learning/<slug:slug>/rollback", learning_views.learning_rollback, name="learning-rollback"),
    path("learning/<slug:slug>/matching/retrain", learning_views.matching_retrain, name="matching-retrain"),
    path("learning/<slug:slug>/matching/pretrain", learning_views.matching_pretrain, name="matching-pretrain"),
    # Attribute tagging (annotate.tag_views).
    path("tag/<slug:slug>/", tag_views.tag, name="tag"),
    path("tag/<slug:slug>/answer", tag_views.tag_answer, name="tag-answer"),
    path("tag/<slug:slug>/skip", tag_views.tag_skip, name="tag-skip"),
    path("tag/<slug:slug>/undo", tag_views.tag_undo, name="tag-undo"),
    path("tag/<slug:slug>/guide/", tag_views.tag_guide, name="tag-guide"),
]
