"""Loaded by pytest before Django: gives this run its own Redis key prefix and test database name,
so that test runs sharing the machine's PostgreSQL and Redis cannot see each other's data."""

import os
import secrets
import uuid

RUN_ID = uuid.uuid4().hex[:8]
os.environ["REDIS_KEY_PREFIX"] = f"test-{RUN_ID}:"
# Connections opened by the read API's pool threads close after each call, so none is left holding the test
# database when pytest drops it.
os.environ["DB_CONN_MAX_AGE"] = "0"
# With DEBUG off the settings refuse to start without a strong key; ./dev exports one, `pytest` alone gets this
# one, which the subprocesses the tests start inherit.
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Tests reach only servers they start: DIDs resolve against a closed local port unless a test starts a PLC, and
# commits are not verified unless a test asks (the synthetic commits of most tests carry no signature).
os.environ.setdefault("PLC_URL", "http://127.0.0.1:9")
os.environ.setdefault("VERIFY_COMMITS", "0")
