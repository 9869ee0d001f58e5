"""Typed readers for environment variables.

A bad value stops the process with one line that names the variable: ``ConfigError`` is a
``SystemExit``, so neither ``manage.py`` nor daphne prints a traceback for it.
"""

import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit


class ConfigError(SystemExit):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"Configuration error: {name} {problem}")


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"must be at most {maximum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, f"must be a number, got {raw!r}") from None
    if value != value or (minimum is not None and value < minimum):
        raise ConfigError(name, f"must be a number of at least {minimum}, got {raw!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


@dataclass(frozen=True)
class DatabaseUrl:
    name: str
    user: str
    password: str
    host: str
    port: str
    options: dict[str, str]

    def as_django(self) -> dict[str, object]:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": self.name,
            "USER": self.user,
            "PASSWORD": self.password,
            "HOST": self.host,
            "PORT": self.port,
            "OPTIONS": self.options,
        }


def env_database_url(name: str, default: str) -> DatabaseUrl:
    raw = os.environ.get(name) or default
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(name, f"is not a valid URL ({exc})") from None
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ConfigError(name, f"must start with postgres://, got {raw!r}")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigError(name, f"must name a database, got {raw!r}")
    return DatabaseUrl(
        name=database,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        host=parts.hostname or "",
        port=str(port or ""),
        options=dict(parse_qsl(parts.query)),
    )


def env_url(name: str, default: str) -> str:
    """An http(s) base URL, without a trailing slash."""
    raw = os.environ.get(name) or default
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(name, f"must be an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def env_redis_url(name: str, default: str) -> str:
    raw = os.environ.get(name) or default
    scheme = urlsplit(raw).scheme
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(name, f"must start with redis://, rediss:// or unix://, got {raw!r}")
    return raw
