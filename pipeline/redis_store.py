"""Connections to Redis and the names of every key the pipeline shares (SPEC section 3).

All names carry ``settings.REDIS_KEY_PREFIX`` so that separate deployments or test runs can share
one Redis server.
"""

from functools import cache

import redis
import redis.asyncio
from django.conf import settings

from protocol.frames import REPO_EVENT_TYPES

# A group name is scoped to its stream, which already carries the prefix.
CONSUMER_GROUP = "firehose-processors"
# The event types a stream entry's ``t`` holds; cluster:metrics counts each under its own name.
EVENT_TYPES = REPO_EVENT_TYPES


def key(name: str) -> str:
    return settings.REDIS_KEY_PREFIX + name


def events_stream() -> str:
    return key("firehose:events")


def dead_letters_stream() -> str:
    return key("firehose:dead-letters")


def firehose_status() -> str:
    return key("firehose:status")


def firehose_cursor() -> str:
    """The ID ``<generation>-<seq>`` of the last entry run_firehose pushed; written in the same call as the
    push."""
    return key("firehose:cursor")


def cluster_metrics() -> str:
    return key("cluster:metrics")


def cluster_workers() -> str:
    """Hash: consumer name -> JSON heartbeat of that worker."""
    return key("cluster:workers")


# Upper bounds (ms) of the buckets of cluster:latency: the time from run_firehose reading an event to its commit
# (then "+inf"). Readers (/metrics) list every bucket, also those no event has fallen in yet.
LATENCY_BUCKETS_MS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000,
                      3000, 5000, 10000, 30000, 60000)


def latency_histogram() -> str:
    """Hash: upper bound in ms of a latency bucket -> events committed that long after run_firehose read them."""
    return key("cluster:latency")


def throughput_bucket(series: str, resolution: str, bucket: int) -> str:
    """Counter of events in one time bucket: series is received or indexed, resolution s or m."""
    return key(f"throughput:{series}:{resolution}:{bucket}")


def backfill_progress() -> str:
    """Hash: the figures of the latest ``manage.py backfill`` run (repositories done, failed, remaining; records,
    records/s, ETA; ``state`` running, finished or stopped; ``updatedAt``), rewritten every second while it runs."""
    return key("backfill:progress")


def dashboard_broadcaster_lease() -> str:
    """String with a TTL: the id of the one web process that builds and broadcasts dashboard snapshots."""
    return key("dashboard:broadcaster")


def dashboard_snapshot() -> str:
    """String with a TTL: the JSON of the latest dashboard snapshot, sent to a websocket as it connects."""
    return key("dashboard:snapshot")


@cache
def connect() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5)


def connect_async() -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=5)
