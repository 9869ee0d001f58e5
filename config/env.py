"""Typed readers for environment variables.

A bad value stops the process with one line that names the variable: ``ConfigError`` is a
``SystemExit``, so neither ``manage.py`` nor daphne prints a traceback for it.
"""

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
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


def _host_and_port(name: str, raw: str, *, default_port: int | None) -> tuple[str, int]:
    problem = f"entries must be {'host[:port]' if default_port else 'host:port'}, got {raw!r}"
    try:
        parts = urlsplit("//" + raw.strip())
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(name, problem) from None
    if not parts.hostname or port is None or parts.path or parts.query or parts.username:
        raise ConfigError(name, problem)
    return parts.hostname, port


def env_ip_addresses(name: str, *, default_port: int) -> list[tuple[str, int]]:
    """Comma-separated ``ip[:port]`` entries (``[::1]:53`` for IPv6); empty when unset."""
    addresses = [_host_and_port(name, item, default_port=default_port) for item in env_list(name, [])]
    for host, _port in addresses:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(name, f"entries must be IP addresses, got {host!r}") from None
    return addresses


def env_host_map(name: str) -> dict[str, tuple[str, int]]:
    """Comma-separated ``name=host:port`` entries, as a map of lowercase names to addresses; empty when unset."""
    mapping: dict[str, tuple[str, int]] = {}
    for item in env_list(name, []):
        key, separator, address = item.partition("=")
        if not separator or not key.strip():
            raise ConfigError(name, f"entries must be name=host:port, got {item!r}")
        mapping[key.strip().lower()] = _host_and_port(name, address, default_port=None)
    return mapping


def env_redis_url(name: str, default: str) -> str:
    raw = os.environ.get(name) or default
    scheme = urlsplit(raw).scheme
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(name, f"must start with redis://, rediss:// or unix://, got {raw!r}")
    return raw


# Django's own deploy check (security.W009) asks for as much; ``secrets.token_urlsafe(50)`` gives 67 characters.
SECRET_KEY_MIN_LENGTH = 50
# Keys anyone can read in this repository's history or in Django's project template.
PUBLIC_SECRET_KEYS = frozenset({"insecure-local-default-set-SECRET_KEY", "build-only"})
PUBLIC_SECRET_KEY_PREFIX = "django-insecure-"
# Signs sessions only on a machine running with DEBUG on, where nothing is worth forging.
DEBUG_SECRET_KEY = "insecure-local-default-set-SECRET_KEY"
SECRET_KEY_HINT = "set a random value of 50+ characters (python3 -c 'import secrets; print(secrets.token_urlsafe(50))')"


def env_secret_key(name: str, *, key_file: Path, debug: bool) -> str:
    """The key that signs sessions, CSRF tokens and password-reset links: ``name`` when set, else the key
    ``./dev`` wrote into ``key_file`` (one random key per checkout, git-ignored).

    With DEBUG off, a missing, empty, short or publicly known key stops the process: whoever knows the key
    can forge an admin's session. With DEBUG on (a machine of one's own), a fixed local key stands in."""
    raw = os.environ.get(name)
    origin = ""
    if raw is None and key_file.is_file():
        raw = key_file.read_text().strip()
        origin = f" (read from {key_file})"
    if debug:
        return raw or DEBUG_SECRET_KEY
    if raw is None:
        raise ConfigError(name, f"is not set and {key_file} does not exist: {SECRET_KEY_HINT}, or DEBUG=on locally")
    if not raw.strip():
        raise ConfigError(name, f"is empty{origin}: {SECRET_KEY_HINT}")
    if raw in PUBLIC_SECRET_KEYS or raw.startswith(PUBLIC_SECRET_KEY_PREFIX):
        raise ConfigError(name, f"is a publicly known default{origin}: {SECRET_KEY_HINT}")
    if len(raw) < SECRET_KEY_MIN_LENGTH or len(set(raw)) < 5:
        strength = f"{len(raw)} characters, {len(set(raw))} distinct"
        raise ConfigError(name, f"is too short or too repetitive{origin} ({strength}): {SECRET_KEY_HINT}")
    return raw
