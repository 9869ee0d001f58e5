import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.env import ConfigError, env_bool, env_database_url, env_int

ROOT = Path(__file__).resolve().parent.parent


def run_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_URL", "mysql://localhost/appview", "DATABASE_URL must start with postgres://"),
        ("DATABASE_URL", "postgres://localhost:notaport/x", "DATABASE_URL is not a valid URL"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL must start with redis://"),
        ("DEBUG", "maybe", "DEBUG must be true or false"),
        ("WORKER_BATCH_SIZE", "lots", "WORKER_BATCH_SIZE must be an integer"),
        ("STREAM_HIGH_WATER", "5", "STREAM_HIGH_WATER must be at least 100"),
    ],
)
def test_it_stops_with_one_line_naming_the_bad_variable(name: str, value: str, message: str) -> None:
    result = run_check(**{name: value})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Configuration error: {message}")


def test_it_starts_with_the_defaults() -> None:
    result = run_check()
    assert result.returncode == 0, result.stderr


def test_it_keeps_debug_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEBUG", raising=False)
    assert env_bool("DEBUG", False) is False
    monkeypatch.setenv("DEBUG", "on")
    assert env_bool("DEBUG", False) is True


def test_it_reads_every_part_of_a_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u%40x:p%2Fw@db.internal:6543/app?sslmode=require")
    url = env_database_url("DATABASE_URL", "postgres://localhost/appview")
    assert (url.user, url.password, url.host, url.port, url.name) == ("u@x", "p/w", "db.internal", "6543", "app")
    assert url.options == {"sslmode": "require"}


def test_it_bounds_integers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N", "0")
    with pytest.raises(ConfigError, match="N must be at least 1, got 0"):
        env_int("N", 5, minimum=1)
    monkeypatch.setenv("N", "")
    assert env_int("N", 5, minimum=1) == 5
