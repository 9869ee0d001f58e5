from django.urls import path

from dashboard import api, views

urlpatterns = [
    path("", views.index, name="dashboard"),
    path("api/metrics", api.MetricsView.as_view(), name="api-metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
]
