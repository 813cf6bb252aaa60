from django.contrib import admin

from .models import EmbeddingRun, ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "backbone", "image_size_px", "embedding_dim", "status", "scope", "created_at"]
    list_filter = ["kind", "status"]


@admin.register(EmbeddingRun)
class EmbeddingRunAdmin(admin.ModelAdmin):
    list_display = [
        "uuid",
        "model_version",
        "target",
        "status",
        "done_count",
        "total_count",
        "skipped_count",
        "images_per_s",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "target"]
    readonly_fields = [f.name for f in EmbeddingRun._meta.fields]
