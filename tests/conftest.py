from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from pipeline import redis_store
from tests.isolation import RUN_ID

# The one path to the fixtures the tests read (copied into the repository: see its README).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCENARIOS = FIXTURES / "relay-scenarios"
SYNTAX = FIXTURES / "interop" / "syntax"


def fixture_files(folder: Path, pattern: str) -> list[Path]:
    """The fixture files in ``folder`` matching ``pattern``, sorted. None is an error, not an empty loop:
    a test over a list that silently became empty would pass without checking anything."""
    paths = sorted(folder.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no fixture file {pattern} in {folder}")
    return paths


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


@pytest.fixture
def unreachable_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's Redis connections point at a port nothing listens on."""
    monkeypatch.setattr(settings, "REDIS_URL", "redis://127.0.0.1:1/0")
    redis_store.connect.cache_clear()
    yield
    redis_store.connect.cache_clear()
