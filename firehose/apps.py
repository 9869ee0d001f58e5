from django.apps import AppConfig


class FirehoseConfig(AppConfig):
    name = "firehose"
