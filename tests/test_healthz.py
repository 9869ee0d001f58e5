import pytest
from django.test import Client


@pytest.mark.django_db
def test_it_reports_both_stores_healthy() -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


@pytest.mark.django_db
def test_it_reports_unreachable_redis(settings: pytest.FixtureRequest) -> None:
    from pipeline import redis_store

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_store.connect.cache_clear()
    try:
        response = Client().get("/healthz")
    finally:
        redis_store.connect.cache_clear()
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error")
