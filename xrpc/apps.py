from django.apps import AppConfig


class XrpcConfig(AppConfig):
    name = "xrpc"
    verbose_name = "XRPC read API"
