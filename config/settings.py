"""One settings module; every value can be set from the environment (SPEC section 2)."""

import os
import re
from pathlib import Path

from config.env import (
    ConfigError,
    env_bool,
    env_database_url,
    env_float,
    env_host_map,
    env_int,
    env_ip_addresses,
    env_list,
    env_redis_url,
    env_secret_key,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", False)
# Unset, the key ./dev generated for this checkout; with DEBUG off, an empty, short or public key stops the process.
SECRET_KEY = env_secret_key(
    "SECRET_KEY", key_file=Path(env_str("SECRET_KEY_FILE", str(BASE_DIR / ".secret_key"))), debug=DEBUG
)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "channels",
    "django.contrib.postgres",
    "pipeline",
    "appview",
    "firehose",
    "relaysim",
    "dashboard",
    "xrpc",
    "identity",
]

MIDDLEWARE = [
    # First, so that it times every request, whatever answers it (Prometheus, /metrics).
    "config.request_metrics.request_metrics_middleware",
    # Before any view or other middleware acts on the URL: a NUL in it answers 400 (SPEC section 14).
    "config.middleware.RejectMalformedRequestsMiddleware",
    # Before Django's own middlewares, which the read API's requests skip (config/middleware.py says why).
    "config.middleware.ReadApiMiddleware",
    "config.middleware.WebStatementTimeoutMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.security.content_security_policy_middleware",
    "config.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_database_url("DATABASE_URL", "postgres://localhost:5432/appview")
DATABASES = {"default": DATABASE_URL.as_django()}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 60, minimum=0)
# Every query here is short; PostgreSQL's JIT compiler, which starts on estimated cost alone, spent
# 20-30 ms compiling statements of a batch that ran in 5 ms.
# Server-side prepared statements (Django leaves them off by default, for poolers that cannot carry them):
# the worker sends the same statements with every batch. Always planned for their values: a generic plan
# made while the tables were small kept its sequential scans as they grew (PostgreSQL's CPU per event
# went from 590 to 1,060 us over 40,000 events). Turn them off behind a transaction pooler that does
# not track prepared statements.
_db_options: dict[str, object] = DATABASES["default"]["OPTIONS"]  # type: ignore[assignment]
_db_options["options"] = f"{_db_options.get('options', '')} -c jit=off -c plan_cache_mode=force_custom_plan".strip()
_db_options["prepare_threshold"] = 5 if env_bool("DB_PREPARED_STATEMENTS", True) else None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_redis_url("REDIS_URL", "redis://localhost:6379/0")
# Every Redis key this project writes starts with this prefix (empty in production), so that test
# runs sharing one Redis server cannot see each other's keys.
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", "")

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": REDIS_KEY_PREFIX + "cache",
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": REDIS_KEY_PREFIX + "asgi"},
    }
}

RELAY_URL = env_str("RELAY_URL", "wss://bsky.network")

# DID resolution and handle confirmation (SPEC section 12, identity/).
PLC_URL = env_url("PLC_URL", "https://plc.directory")
IDENTITY_CACHE_TTL = env_int("IDENTITY_CACHE_TTL", 24 * 3600, minimum=1)  # seconds a resolved DID is trusted
IDENTITY_TIMEOUT = env_float("IDENTITY_TIMEOUT", 5.0, minimum=0.1)  # seconds, per request and per DNS query
IDENTITY_CONCURRENCY = env_int("IDENTITY_CONCURRENCY", 8, minimum=1)  # requests at once to one host
# Empty: the system's resolver. Tests and the simulator point it at a local server ("127.0.0.1:5353").
DNS_NAMESERVERS = env_ip_addresses("DNS_NAMESERVERS", default_port=53)
# Dev and tests only: "example.test=127.0.0.1:8123,..." sends requests for these host names to a local server
# over plain http (did:web documents, handles' atproto-did, PDSes). Empty in production: https only.
IDENTITY_HOST_OVERRIDES = env_host_map("IDENTITY_HOST_OVERRIDES")

# The dashboard is public: off, it shows workers without host or pid, under a pseudonym (/metrics keeps names).
DASHBOARD_SHOW_HOSTS = env_bool("DASHBOARD_SHOW_HOSTS", True)
# When set, /metrics (Prometheus) answers only requests with "Authorization: Bearer <METRICS_TOKEN>";
# unset, it is open to anyone who reaches the web server.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

# The read API (SPEC section 13).
IMAGE_CDN_URL = env_url("IMAGE_CDN_URL", "https://cdn.bsky.app")
VIDEO_CDN_URL = env_url("VIDEO_CDN_URL", "https://video.bsky.app")
XRPC_RATE_LIMIT = env_int("XRPC_RATE_LIMIT", 3000, minimum=1)  # requests per IP per window
XRPC_RATE_WINDOW_SECONDS = env_int("XRPC_RATE_WINDOW_SECONDS", 300, minimum=1)
XRPC_STATEMENT_TIMEOUT_MS = env_int("XRPC_STATEMENT_TIMEOUT_MS", 5000, minimum=10)

# The admin and the other web pages (SPEC section 14): every query of a request to them is cancelled after
# WEB_STATEMENT_TIMEOUT_MS (504); sign-in failures are counted in Redis per username and per client address
# within ADMIN_LOGIN_WINDOW_SECONDS, and past either limit the sign-in is refused, right password or not.
WEB_STATEMENT_TIMEOUT_MS = env_int("WEB_STATEMENT_TIMEOUT_MS", 5000, minimum=10)
ADMIN_LOGIN_MAX_FAILURES = env_int("ADMIN_LOGIN_MAX_FAILURES", 5, minimum=1)
ADMIN_LOGIN_MAX_FAILURES_PER_IP = env_int("ADMIN_LOGIN_MAX_FAILURES_PER_IP", 20, minimum=1)
ADMIN_LOGIN_WINDOW_SECONDS = env_int("ADMIN_LOGIN_WINDOW_SECONDS", 900, minimum=1)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Tunables of the pipeline (SPEC sections 5 and 7).
STREAM_HIGH_WATER = env_int("STREAM_HIGH_WATER", 200_000, minimum=100)
STREAM_LOW_WATER = env_int("STREAM_LOW_WATER", STREAM_HIGH_WATER // 2, minimum=0)
if STREAM_LOW_WATER >= STREAM_HIGH_WATER:
    raise ConfigError("STREAM_LOW_WATER", "must be below STREAM_HIGH_WATER")
FIREHOSE_STALL_SECONDS = env_float("FIREHOSE_STALL_SECONDS", 60.0, minimum=1.0)
FIREHOSE_MAX_FRAME_BYTES = env_int("FIREHOSE_MAX_FRAME_BYTES", 5 * 1024 * 1024, minimum=1024)
WORKER_BATCH_SIZE = env_int("WORKER_BATCH_SIZE", 5000, minimum=1, maximum=100_000)
WORKER_CLAIM_IDLE_MS = env_int("WORKER_CLAIM_IDLE_MS", 60_000, minimum=1000)
WORKER_MAX_ATTEMPTS = env_int("WORKER_MAX_ATTEMPTS", 3, minimum=1)

# Sync (SPEC section 12). Commits are checked as Sync v1.1 says unless VERIFY_COMMITS is off.
VERIFY_COMMITS = env_bool("VERIFY_COMMITS", True)
# Seconds a batch waits for the signing keys of repos not in the caches; a repo whose key is still unknown
# is queued for resync rather than holding up the batch.
SIGNING_KEY_WAIT = env_float("SIGNING_KEY_WAIT", 2.0, minimum=0.0)
# Seconds a commit named as ``since`` may stay missing (another worker may hold it) before the repo is resynced.
MISSING_COMMIT_GRACE = env_float("MISSING_COMMIT_GRACE", 120.0, minimum=1.0)
# Seconds a tombstone is kept: longer than any relay replays events (a few days) and than the stream holds them.
TOMBSTONE_RETENTION = env_int("TOMBSTONE_RETENTION", 7 * 86_400, minimum=3600)
RESYNC_CONCURRENCY = env_int("RESYNC_CONCURRENCY", 4, minimum=1, maximum=64)  # repos fetched at once
RESYNC_MAX_BYTES = env_int("RESYNC_MAX_BYTES", 1024**3, minimum=1024 * 1024)  # largest repository export accepted
# Seconds per network operation of a repository fetch; the whole fetch may take 60 times that.
RESYNC_TIMEOUT = env_float("RESYNC_TIMEOUT", 30.0, minimum=1.0)

# Which collections are stored, by backfill and live indexing alike: NSIDs and namespaces ("app.bsky.graph.*"),
# comma-separated; empty: every collection (appview/indexing/collection_filter.py).
COLLECTION_FILTERS = tuple(env_list("COLLECTION_FILTERS", []))
for _pattern in COLLECTION_FILTERS:
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]*(\.[a-zA-Z0-9-]+)*(\.\*|\.[a-zA-Z][a-zA-Z0-9]*)", _pattern):
        raise ConfigError("COLLECTION_FILTERS", f"must list NSIDs or namespaces ending in .*, got {_pattern!r}")

# Which repositories live indexing follows: "network" (every one the firehose carries) or "tracked" (those in the
# backfill queue, in any state: the scopes of backfill runs; and a repository whose live commit writes
# SIGNAL_COLLECTION, queued for backfill then). The others' events are counted (outOfScope) and skipped.
LIVE_SCOPE = env_str("LIVE_SCOPE", "network")
if LIVE_SCOPE not in ("network", "tracked"):
    raise ConfigError("LIVE_SCOPE", f"must be network or tracked, got {LIVE_SCOPE!r}")
SIGNAL_COLLECTION = env_str("SIGNAL_COLLECTION", "")
if SIGNAL_COLLECTION and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]*(\.[a-zA-Z0-9-]+)+\.[a-zA-Z][a-zA-Z0-9]*",
                                          SIGNAL_COLLECTION):
    raise ConfigError("SIGNAL_COLLECTION", f"must be an NSID, got {SIGNAL_COLLECTION!r}")
if SIGNAL_COLLECTION and LIVE_SCOPE != "tracked":
    raise ConfigError("SIGNAL_COLLECTION", "brings repositories into LIVE_SCOPE=tracked only: set LIVE_SCOPE too")

# Backfill (manage.py backfill, appview/sync/backfill.py): whole repositories loaded from their PDSes.
BACKFILL_CONCURRENCY = env_int("BACKFILL_CONCURRENCY", 8, minimum=1, maximum=256)  # repositories fetched at once
BACKFILL_PDS_CONCURRENCY = env_int("BACKFILL_PDS_CONCURRENCY", 4, minimum=1)  # of them from one PDS
# Processes that verify and stage the repositories (the CPU-bound step); 0: the loader threads do it themselves,
# on one core. One core is left to the backfill's own process (downloads, the writer) and PostgreSQL; on two
# cores one staging process was still 10% faster on average than none (docs/benchmarks.md, Backfill).
BACKFILL_PROCESSES = env_int("BACKFILL_PROCESSES", max(len(os.sched_getaffinity(0)) - 1, 1), minimum=0, maximum=256)
# Records (and repositories) written to PostgreSQL in one transaction: a COPY into staging tables, one merge.
BACKFILL_BATCH_RECORDS = env_int("BACKFILL_BATCH_RECORDS", 20_000, minimum=1)
BACKFILL_BATCH_REPOS = env_int("BACKFILL_BATCH_REPOS", 500, minimum=1)
# Seconds a run's claim on a repository lasts without being renewed (a killed run's repos are taken again after it).
BACKFILL_LEASE_SECONDS = env_float("BACKFILL_LEASE_SECONDS", 120.0, minimum=1.0)
BACKFILL_MAX_TRIES = env_int("BACKFILL_MAX_TRIES", 5, minimum=1)  # failed loads of a repo before it stays failed

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Serving it safely (SPEC section 14; docker-compose.yml puts Caddy in front of daphne). `manage.py check --deploy`
# is clean with the values docker-compose.yml passes for a public site (tests/test_deploy.py).
# On only behind a proxy that overwrites X-Forwarded-For and X-Forwarded-Proto and is the only way in (Caddy in
# docker-compose.yml), together with daphne's --proxy-headers: anyone else could claim any address or https.
TRUST_PROXY_HEADERS = env_bool("TRUST_PROXY_HEADERS", False)
if TRUST_PROXY_HEADERS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Browsers reach the site over HTTPS (docker-compose: SITE_ADDRESS is a domain name): cookies travel only over
# HTTPS, and HTTPS answers carry HSTS (Django never sends it over plain HTTP).
HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 365 * 24 * 3600 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading commits the whole registrable domain, which only its owner can decide.
SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", False)
# Off by default: Caddy redirects HTTP to HTTPS for a domain name before Django sees the request.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Container health checks call daphne directly over HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
if HTTPS and TRUST_PROXY_HEADERS and not SECURE_SSL_REDIRECT:
    SILENCED_SYSTEM_CHECKS.append("security.W008")  # the proxy redirects
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy of every response (config/security.py; Django 6's setting name and shape). The pages
# load scripts and styles from static files only; the dashboard's data island (type="application/json") is
# never executed, so the policy does not concern it; its websocket is same-origin ('self' covers ws/wss).
SECURE_CSP: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
    raise ConfigError("LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR, got {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # httpx logs every request at INFO: one line per DID resolved.
    "loggers": {"django.channels.server": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}
