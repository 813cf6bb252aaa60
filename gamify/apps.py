from django.apps import AppConfig


class GamifyConfig(AppConfig):
    name = "gamify"
    verbose_name = "Gamification"
