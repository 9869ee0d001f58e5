from django.urls import URLPattern, path

from dashboard.consumers import MetricsConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/metrics/", MetricsConsumer.as_asgi(), name="ws-metrics"),
]
