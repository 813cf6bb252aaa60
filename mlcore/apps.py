from django.apps import AppConfig


class MlcoreConfig(AppConfig):
    name = "mlcore"
