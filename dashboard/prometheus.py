"""The cluster's figures for Prometheus, read at scrape time through the dashboard's selectors.

Everything here comes from Redis and PostgreSQL, so that every web process gives the same answer: the
``cluster:metrics`` counters, the queue and how far behind the workers are, each worker's heartbeat, the
firehose's status, and the resync and backfill queues. The request counters of the web process itself are
kept by ``config.request_metrics`` in prometheus-client's default registry. A store that does not answer
gives ``appview_store_up{store=...} 0`` and leaves its series out, never an error page.
"""

import logging
import time
from collections.abc import Iterator

import redis
from django.db import DatabaseError
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from appview import selectors as appview_selectors
from dashboard import selectors
from pipeline import redis_store

logger = logging.getLogger(__name__)


class ClusterCollector:
    """A prometheus-client collector (anything with ``collect``) that reads the stores on each call."""

    def collect(self) -> Iterator[Metric]:
        store_up = GaugeMetricFamily("appview_store_up", "Whether the store answered this scrape (1) or not (0)",
                                     labels=["store"])
        now = time.time()
        try:
            state = selectors.read_pipeline(now=now, history_seconds=1, history_minutes=1, show_hosts=True)
            lag_seconds = selectors.oldest_waiting_age(state, now=now)
        except redis.RedisError as exc:
            logger.warning("metrics scrape without Redis: %s: %s", type(exc).__name__, exc)
            store_up.add_metric(["redis"], 0)
        else:
            store_up.add_metric(["redis"], 1)
            yield from _counters(state)
            yield from _queue(state, lag_seconds)
            yield from _workers(state)
            yield from _firehose(state)
            yield _latency(state)
            yield from _backfill(state)
        try:
            repos = appview_selectors.repo_sync_counts()
            backfill_queue = appview_selectors.backfill_queue()
        except DatabaseError as exc:
            logger.warning("metrics scrape without PostgreSQL: %s: %s", type(exc).__name__, exc)
            store_up.add_metric(["postgres"], 0)
        else:
            store_up.add_metric(["postgres"], 1)
            by_state = GaugeMetricFamily("appview_repos_out_of_sync",
                                         "Repositories not in sync with their PDS, by state (queued: waiting for a"
                                         " resync)", labels=["state"])
            for state_name, count in repos.items():
                by_state.add_metric([state_name], count)
            yield by_state
            yield GaugeMetricFamily("appview_backfill_queue_repos", "Repositories a backfill run will load (pending,"
                                    " in progress, or failed and due again)", value=backfill_queue["waiting"])
            backfill_by_state = GaugeMetricFamily("appview_backfill_repos", "Repositories of the backfill queue not"
                                                  " done yet, by state", labels=["state"])
            for state_name in ("pending", "in_progress", "failed"):
                backfill_by_state.add_metric([state_name], backfill_queue[state_name])
            yield backfill_by_state
        yield store_up


def _counters(state: selectors.PipelineState) -> Iterator[Metric]:
    counters = state.counters
    yield CounterMetricFamily("appview_events_indexed", "Events indexed and acknowledged (cluster:metrics totalEvents)",
                              value=counters.get("totalEvents", 0))
    by_type = CounterMetricFamily("appview_events_indexed_by_type", "Events indexed, by event type (cluster:metrics)",
                                  labels=["type"])
    for event_type in redis_store.EVENT_TYPES:
        by_type.add_metric([event_type], counters.get(event_type, 0))
    yield by_type
    yield CounterMetricFamily("appview_indexing_errors", "Events that failed to index in part or whole "
                              "(cluster:metrics errors)", value=counters.get("errors", 0))
    # Per-reason counters and whatever else workers add to the hash, under the name they have there.
    every_field = CounterMetricFamily("appview_cluster_metrics", "Every numeric field of cluster:metrics",
                                      labels=["field"])
    for field, value in sorted(counters.items()):
        every_field.add_metric([field], value)
    yield every_field


def _queue(state: selectors.PipelineState, lag_seconds: float) -> Iterator[Metric]:
    queue = state.queue
    yield GaugeMetricFamily("appview_stream_length", "Entries in firehose:events", value=queue["length"])
    yield GaugeMetricFamily("appview_stream_pending", "Entries delivered to a worker and not acknowledged yet",
                            value=queue["pending"])
    yield GaugeMetricFamily("appview_dead_letters", "Entries in firehose:dead-letters", value=queue["deadLetters"])
    # After deletions from the stream Redis cannot tell how many entries the group has not delivered.
    if queue["undelivered"] is not None:
        yield GaugeMetricFamily("appview_stream_undelivered", "Entries no worker has been given yet",
                                value=queue["undelivered"])
        yield GaugeMetricFamily("appview_consumer_lag_events", "Entries not indexed yet (pending and undelivered)",
                                value=queue["pending"] + queue["undelivered"])
    yield GaugeMetricFamily("appview_consumer_lag_seconds",
                            "Seconds since run_firehose read the oldest entry not indexed yet (0 when none waits)",
                            value=lag_seconds)


def _workers(state: selectors.PipelineState) -> Iterator[Metric]:
    age = GaugeMetricFamily("appview_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat",
                            labels=["worker"])
    processed = CounterMetricFamily("appview_worker_processed", "Events the worker processed since it started",
                                    labels=["worker"])
    errors = CounterMetricFamily("appview_worker_errors", "Events with errors since the worker started",
                                 labels=["worker"])
    batch_latency = GaugeMetricFamily("appview_worker_batch_latency_seconds", "Duration of the worker's last batch",
                                      labels=["worker"])
    count = GaugeMetricFamily("appview_workers", "Workers with a heartbeat, live or stale (silent over "
                              f"{selectors.WORKER_STALE_SECONDS:.0f} s)", labels=["state"])
    for worker in state.workers:
        if worker["heartbeatAgeSeconds"] is not None:
            age.add_metric([worker["name"]], worker["heartbeatAgeSeconds"])
        processed.add_metric([worker["name"]], worker["processed"])
        errors.add_metric([worker["name"]], worker["errors"])
        if worker["batchLatencyMs"] is not None:
            batch_latency.add_metric([worker["name"]], worker["batchLatencyMs"] / 1000)
    stale = sum(worker["stale"] for worker in state.workers)
    count.add_metric(["live"], len(state.workers) - stale)
    count.add_metric(["stale"], stale)
    yield from (age, processed, errors, batch_latency, count)


def _firehose(state: selectors.PipelineState) -> Iterator[Metric]:
    status = state.firehose
    yield GaugeMetricFamily("appview_firehose_connected", "Whether run_firehose is connected to the relay",
                            value=int(status["connected"]))
    yield GaugeMetricFamily("appview_firehose_paused", "Whether run_firehose is paused because the stream is full",
                            value=int(status["connected"] and status["paused"]))
    if status["currentCursor"] is not None and status["currentCursor"].isdigit():
        yield GaugeMetricFamily("appview_firehose_cursor", "Relay seq of the last event run_firehose pushed",
                                value=int(status["currentCursor"]))
    if status["freshnessSeconds"] is not None:
        yield GaugeMetricFamily("appview_firehose_freshness_seconds", "Age of the last relay event when it arrived",
                                value=status["freshnessSeconds"])
    yield CounterMetricFamily("appview_firehose_reconnects", "Reconnections of the running run_firehose",
                              value=status["reconnects"])
    yield CounterMetricFamily("appview_firehose_events_received", "Events the running run_firehose received",
                              value=status["eventsReceived"])
    yield CounterMetricFamily("appview_firehose_errors", "Frames the running run_firehose could not use",
                              value=status["errors"])


def _latency(state: selectors.PipelineState) -> Metric:
    """cluster:latency as a histogram: from run_firehose reading an event to its commit in PostgreSQL. The hash
    keeps counts per bucket only, no sum: the histogram has its buckets and no _sum or _count."""
    cumulative, buckets = 0, []
    for bound_ms in redis_store.LATENCY_BUCKETS_MS:
        cumulative += state.latency_ms.get(str(bound_ms), 0)
        buckets.append((f"{bound_ms / 1000:g}", cumulative))
    buckets.append(("+Inf", cumulative + state.latency_ms.get("+inf", 0)))
    histogram = HistogramMetricFamily("appview_index_latency_seconds",
                                      "Time from run_firehose reading an event to its commit (cluster:latency)")
    histogram.add_metric([], buckets, sum_value=None)
    return histogram


def _backfill(state: selectors.PipelineState) -> Iterator[Metric]:
    """The latest backfill run's figures, as it publishes them (``backfill:progress``)."""
    progress = state.backfill
    yield GaugeMetricFamily("appview_backfill_running", "Whether a backfill run is publishing its progress now",
                            value=int(progress["state"] == "running"))
    repos = GaugeMetricFamily("appview_backfill_run_repos", "Repositories of the latest backfill run, by state "
                              "(done counts those done before it started)", labels=["state"])
    for name, key in (("done", "reposDone"), ("failed", "reposFailed"), ("in_progress", "reposInProgress"),
                      ("remaining", "reposRemaining")):
        repos.add_metric([name], progress[key])  # type: ignore[literal-required]
    yield repos
    yield GaugeMetricFamily("appview_backfill_records", "Records the latest backfill run stored",
                            value=progress["records"])
    yield GaugeMetricFamily("appview_backfill_records_per_second", "Records per second of the latest backfill run",
                            value=progress["recordsPerSecond"])
    if progress["etaSeconds"] is not None:
        yield GaugeMetricFamily("appview_backfill_eta_seconds", "Seconds the running backfill expects to need",
                                value=progress["etaSeconds"])
