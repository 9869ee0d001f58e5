import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from config.env import ConfigError, env_bool, env_database_url, env_int

ROOT = Path(__file__).resolve().parent.parent


def run_check(*, unset: tuple[str, ...] = (), argv: tuple[str, ...] = (sys.executable, "manage.py", "check"),
              **env: str) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` (``manage.py check``) with this environment, less ``unset``, plus ``env``."""
    environment = {name: value for name, value in os.environ.items() if name not in unset}
    return subprocess.run(
        list(argv),
        cwd=ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Configuration error: {message}"), lines[0]


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


WEAK_SECRET_KEYS = [
    pytest.param("", "SECRET_KEY is empty", id="empty"),
    pytest.param("   ", "SECRET_KEY is empty", id="blank"),
    pytest.param("a-key-of-40-characters-0123456789abcdefg", "SECRET_KEY is too short", id="short"),
    pytest.param("ab" * 40, "SECRET_KEY is too short or too repetitive", id="repetitive"),
    pytest.param("insecure-local-default-set-SECRET_KEY", "SECRET_KEY is a publicly known default", id="default"),
    pytest.param("django-insecure-" + secrets.token_urlsafe(50), "SECRET_KEY is a publicly known default",
                 id="django-template"),
]


@pytest.mark.parametrize(("value", "message"), WEAK_SECRET_KEYS)
def test_it_refuses_a_weak_secret_key_with_debug_off(value: str, message: str) -> None:
    assert_one_line(run_check(unset=("DEBUG",), SECRET_KEY=value), message)


def test_it_refuses_to_start_without_a_secret_key_with_debug_off(tmp_path: Path) -> None:
    result = run_check(unset=("DEBUG", "SECRET_KEY"), SECRET_KEY_FILE=str(tmp_path / "missing"))
    assert_one_line(result, "SECRET_KEY is not set")


def test_it_keeps_the_web_server_from_starting_on_an_empty_secret_key() -> None:
    daphne = str(Path(sys.executable).parent / "daphne")
    result = run_check(unset=("DEBUG",), argv=(daphne, "-p", "0", "config.asgi:application"), SECRET_KEY="")
    assert_one_line(result, "SECRET_KEY is empty")


@pytest.mark.parametrize("value", ["", "short", "insecure-local-default-set-SECRET_KEY"])
def test_it_accepts_any_secret_key_with_debug_on(value: str) -> None:
    result = run_check(DEBUG="on", SECRET_KEY=value)
    assert result.returncode == 0, result.stderr


def test_it_reads_the_key_dev_generated_when_secret_key_is_unset(tmp_path: Path) -> None:
    key_file = tmp_path / "secret_key"
    key_file.write_text(secrets.token_urlsafe(50) + "\n")
    assert run_check(unset=("DEBUG", "SECRET_KEY"), SECRET_KEY_FILE=str(key_file)).returncode == 0
    key_file.write_text("too-short\n")
    result = run_check(unset=("DEBUG", "SECRET_KEY"), SECRET_KEY_FILE=str(key_file))
    assert_one_line(result, f"SECRET_KEY is too short or too repetitive (read from {key_file})")
