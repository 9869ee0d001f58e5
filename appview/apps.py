from django.apps import AppConfig


class AppviewConfig(AppConfig):
    name = "appview"
    verbose_name = "AppView records"
