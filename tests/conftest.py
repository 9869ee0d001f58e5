from collections.abc import Iterator

import pytest
from django.conf import settings

from appview import redis_store
from tests.isolation import RUN_ID


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = f"test_appview_{RUN_ID}"


@pytest.fixture(autouse=True)
def clean_redis() -> Iterator[None]:
    """Each test starts with none of this run's keys in Redis, and leaves none behind."""
    client = redis_store.connect()

    def wipe() -> None:
        keys = list(client.scan_iter(match=settings.REDIS_KEY_PREFIX + "*", count=1000))
        if keys:
            client.delete(*keys)

    wipe()
    yield
    wipe()
