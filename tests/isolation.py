"""Loaded by pytest before Django: gives this run its own Redis key prefix and test database name,
so that test runs sharing the machine's PostgreSQL and Redis cannot see each other's data."""

import os
import uuid

RUN_ID = uuid.uuid4().hex[:8]
os.environ["REDIS_KEY_PREFIX"] = f"test-{RUN_ID}:"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
