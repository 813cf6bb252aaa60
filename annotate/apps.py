from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"

    def ready(self):
        from mlcore.training import model_activated

        from .learning import on_model_activated

        # A model promoted or rolled back: re-rank and auto-accept with it (annotate.learning).
        model_activated.connect(on_model_activated, dispatch_uid="annotate.learning.on_model_activated")
