"""Benchmark of run_worker against its ceiling and against a naive indexer, on the same events.

    .venv/bin/python bench/worker_bench.py [--events 100000] [--seed 1] [--actors 5000] [--batch-size N]
                                           [--naive-sample 5000] [--runs 1] [--write docs/benchmarks.md]

1. Fills firehose:events (a Redis key prefix of its own) with ``--events`` frames of the synthetic
   relay (relaysim.simulation.SyntheticFirehose: the realistic mix run_relay_sim serves).
2. Worker: ``manage.py run_worker --drain`` as a subprocess on a fresh database; events/s from its first
   acknowledged batch to its last, and its peak resident memory (psutil). With ``--runs N``, N times
   (each on a fresh database and a refilled stream): the median run is reported, with the range, since
   runs on a shared machine vary by a quarter.
3. Ceiling: the rows the worker stored are copied out to memory, the tables truncated, and the rows
   written back with a binary COPY into the same tables, indexes included; events/s = events / COPY time.
4. Naive indexer: one transaction per event, the ORM's update_or_create()/delete() per record and +1
   counters, on the first ``--naive-sample`` events (extrapolated: it is slow).

Prints a table and, with ``--write``, replaces the "Worker" section of that Markdown file. Not a test.
Creates and drops its own database (``appview_worker_bench``) and removes its Redis keys at exit.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.markdown import write_section  # noqa: E402

BENCH_DB = "appview_worker_bench"
# Databases that benchmarks create and drop themselves (this one, bench/e2e.py's scratch copies): the only
# ones whose tables the COPY ceiling may truncate.
THROWAWAY_DATABASES = (BENCH_DB, "appview_scratch_")
# Each sample costs about a millisecond of this script's CPU, which the worker and PostgreSQL share the cores
# with; 50 ms still times the run to a quarter of a percent.
SAMPLE_SECONDS = 0.05
TARGETS = {"rate": 15_000, "copy_ratio": 0.5, "naive_ratio": 10, "rss_mb": 200}


def setup_environment(prefix: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["REDIS_KEY_PREFIX"] = prefix
    # The unsigned simulator's commits carry no real signature or MST: this measures indexing without the
    # Sync v1.1 checks (bench/sync_bench.py measures them), and resolves no DID (#identity events) on the network.
    os.environ["VERIFY_COMMITS"] = "0"
    os.environ["PLC_URL"] = "http://127.0.0.1:9"
    base = os.environ.get("DATABASE_URL", "postgres://localhost:5432/appview")
    os.environ["DATABASE_URL"] = re.sub(r"/[^/]*$", f"/{BENCH_DB}", base)


def admin_sql(*statements: str) -> None:
    """Runs statements on the server's maintenance database (to create or drop the benchmark's own)."""
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    conninfo = {k: v for k, v in {"host": db["HOST"], "port": db["PORT"], "user": db["USER"],
                                  "password": db["PASSWORD"]}.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **conninfo) as conn:
        for statement in statements:
            conn.execute(statement)


def recreate_database() -> None:
    admin_sql(f"DROP DATABASE IF EXISTS {BENCH_DB}", f"CREATE DATABASE {BENCH_DB}")
    subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), "migrate", "-v0"], check=True, cwd=BASE_DIR)


def fill_stream(events: int, seed: int, actors: int) -> list[tuple[int, bytes]]:
    from relaysim.simulation import SyntheticFirehose

    frames = list(SyntheticFirehose(seed=seed, start_seq=1, actors=actors).frames(events))
    push_frames(frames)
    return frames


def push_frames(frames: list[tuple[int, bytes]]) -> None:
    """Adds the frames to firehose:events as run_firehose would, 5000 to a pipeline."""
    from harness.events import push
    from pipeline import redis_store

    client = redis_store.connect()
    for start in range(0, len(frames), 5000):
        push(client, frames[start:start + 5000])


def run_worker(batch_size: int) -> tuple[float, float, float]:
    """Seconds from start to exit, seconds from the first acknowledged batch to the last, and peak RSS in
    MB of ``run_worker --drain``."""
    # The worker's log goes to a file: a pipe read only after its exit would fill up and block its logging.
    with tempfile.TemporaryFile() as log:
        return _run_worker(batch_size, log)


def _run_worker(batch_size: int, log: IO[bytes]) -> tuple[float, float, float]:
    from pipeline import redis_store

    client = redis_store.connect()
    postgres = PostgresProcesses(BENCH_DB)
    postgres.scan()
    # Backends open before the worker (a benchmark's own connection, which may have worked before the run, as
    # sync_bench's resolving every DID): only the CPU they use from now on counts.
    before: dict[int, float] = {}
    for pid, backend in postgres.backends.items():
        with suppress(psutil.Error):
            before[pid] = cpu_seconds(backend)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "run_worker", "--drain", "--consumer", "bench",
         "--batch-size", str(batch_size)],
        cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT,
    )
    watched = psutil.Process(process.pid)
    backend_cpu: dict[int, float] = {}  # kept for backends that have ended: CPU times are cumulative
    next_scan = 0.0
    worker_cpu = 0.0
    peak = 0
    first: tuple[float, int] | None = None
    last = (started, 0)
    sampler_cpu = time.process_time()
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
            worker_cpu = cpu_seconds(watched)
        except psutil.Error:
            break
        if time.monotonic() >= next_scan:
            next_scan = time.monotonic() + 0.2
            postgres.scan()
        for pid, backend in postgres.backends.items():
            with suppress(psutil.Error):
                backend_cpu[pid] = cpu_seconds(backend)
        counted = int(client.hget(redis_store.cluster_metrics(), "totalEvents") or 0)
        now = time.perf_counter()
        if counted and first is None:
            first = (now, counted)
        if counted > last[1]:
            last = (now, counted)
        time.sleep(SAMPLE_SECONDS)
    elapsed = time.perf_counter() - started
    CPU["sampler"] = time.process_time() - sampler_cpu
    log.seek(0)
    output = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"run_worker failed:\n{output[-3000:]}")
    steady = (last[1] - first[1]) / (last[0] - first[0]) if first and last[0] > first[0] else 0.0
    CPU["worker"] = worker_cpu
    CPU["postgres"] = sum(cpu - before.get(pid, 0.0) for pid, cpu in backend_cpu.items())
    return elapsed, steady, peak / 2**20


CPU: dict[str, float] = {}
LOAD: list[float] = []  # one-minute load average before and after the run


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


# Titles of the PostgreSQL server's own processes, which work for every database.
PG_BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher",
                 "logical replication launcher", "stats collector", "archiver")


class PostgresProcesses:
    """The PostgreSQL server processes serving ``database`` (their title names it) and the server's
    background processes (WAL writer, checkpointer...), which work for every database. Each process is
    classified once: reading every process's command line at each sample cost the benchmark more than half
    a core, which the worker and PostgreSQL then lacked."""

    def __init__(self, database: str) -> None:
        self._database = database
        self._settled: set[int] = set()  # processes already classified
        self.backends: dict[int, psutil.Process] = {}
        self.background: dict[int, psutil.Process] = {}

    def scan(self) -> None:
        """Classifies the processes started since the last scan and forgets those that ended. Safe to call
        from two threads (e2e's sampler and its main thread)."""
        pids = psutil.pids()
        self._settled &= set(pids)  # a pid freed by an ended process may come back as a new backend
        for pid in pids:
            if pid not in self._settled:
                self._classify(pid)
        for found in (self.backends, self.background):
            for pid, process in list(found.items()):
                if not process.is_running():
                    found.pop(pid, None)

    def _classify(self, pid: int) -> None:
        try:
            process = psutil.Process(pid)
            title = " ".join(process.cmdline())
            just_forked = process.name() == "postgres" and time.time() - process.create_time() < 1
        except psutil.Error:
            self._settled.add(pid)
            return
        if just_forked and not title.startswith("postgres:"):
            return  # a backend whose title is not set yet: look again next time
        self._settled.add(pid)
        if not title.startswith("postgres:"):
            return
        if f" {self._database} " in title:
            self.backends[pid] = process
        elif any(name in title for name in PG_BACKGROUND):
            self.background[pid] = process


def record_tables() -> list[str]:
    from appview.models import RECORD_MODELS, Actor, GenericRecord, RecordTombstone

    return [model._meta.db_table for model in (*RECORD_MODELS, GenericRecord, RecordTombstone, Actor)]


def copy_ceiling() -> tuple[float, int]:
    """Seconds to COPY the stored rows back into their (truncated) tables, and the number of rows."""
    from django.db import connection

    database = connection.settings_dict["NAME"]
    if not database.startswith(THROWAWAY_DATABASES):
        raise RuntimeError(f"refusing to truncate the tables of {database!r}: not a benchmark's own database")
    connection.ensure_connection()
    raw = connection.connection
    raw.autocommit = True
    data: dict[str, bytes] = {}
    rows = 0
    with raw.cursor() as cur:
        for table in record_tables():
            buffer = bytearray()
            with cur.copy(f"COPY {table} TO STDOUT (FORMAT binary)") as copy:
                for chunk in copy:
                    buffer += chunk
            data[table] = bytes(buffer)
            cur.execute(f"SELECT count(*) FROM {table}")
            rows += cur.fetchone()[0]
        cur.execute(f"TRUNCATE {', '.join(data)}")
        cur.execute("CHECKPOINT")
    started = time.perf_counter()
    with raw.transaction(), raw.cursor() as cur:
        for table, content in data.items():
            with cur.copy(f"COPY {table} FROM STDIN (FORMAT binary)") as copy:
                copy.write(content)
    return time.perf_counter() - started, rows


def naive_index(frames: list[tuple[int, bytes]]) -> float:
    """Seconds for the naive indexer to index ``frames``: one transaction per event, ORM calls per record."""
    from django.db import transaction
    from django.db.models import F

    from appview.indexing.collections import TABLE_BY_COLLECTION
    from appview.indexing.events import parse_entry
    from appview.models import Actor, GenericRecord, Post

    counters = {"app.bsky.feed.like": "like_count", "app.bsky.feed.repost": "repost_count"}
    started = time.perf_counter()
    for seq, frame in frames:
        event = parse_entry(b"%d-0" % seq, {b"frame": frame})
        if not event.usable:
            continue
        with transaction.atomic():
            actor, _ = Actor.objects.get_or_create(did=event.did)
            if event.account is not None:
                actor.active, actor.status = event.account
                actor.save()
            for write in event.writes:
                spec = TABLE_BY_COLLECTION.get(write.collection)
                model: Any = GenericRecord if spec is None else spec.model
                if write.is_delete:
                    model.objects.filter(uri=write.uri).delete()
                    continue
                fields = {"did": write.did, "rkey": write.rkey, "cid": write.cid, "rev": write.rev, "seq": write.seq,
                          "created_at": write.created_at, "raw": write.raw}
                if spec is None:
                    fields["collection"] = write.collection
                else:
                    fields.update({name: value for (name, _), value in zip(spec.columns, write.values or (),
                                                                           strict=True)})
                model.objects.update_or_create(uri=write.uri, defaults=fields)
                if write.collection in counters:
                    Post.objects.filter(uri=fields["subject_uri"]).update(
                        **{counters[write.collection]: F(counters[write.collection]) + 1})
                elif write.collection == "app.bsky.graph.follow":
                    Actor.objects.filter(did=fields["subject_did"]).update(followers_count=F("followers_count") + 1)
                elif write.collection == "app.bsky.feed.post":
                    Actor.objects.filter(did=write.did).update(posts_count=F("posts_count") + 1)
    return time.perf_counter() - started


def remove_keys(client: Any) -> None:
    from pipeline import redis_store

    for key in client.scan_iter(match=redis_store.key("*"), count=1000):
        client.delete(key)


def truncate() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(record_tables())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--actors", type=int, default=5000,
                        help="size of the synthetic actor population (run_relay_sim's default: 5000)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: run_worker's (WORKER_BATCH_SIZE)")
    parser.add_argument("--naive-sample", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1, help="worker runs; the median one is reported")
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose Worker section to replace")
    args = parser.parse_args()
    setup_environment(f"bench-worker-{uuid.uuid4().hex[:8]}:")
    import django

    django.setup()
    from django.conf import settings

    from pipeline import redis_store

    if args.batch_size is None:
        args.batch_size = settings.WORKER_BATCH_SIZE

    client = redis_store.connect()
    LOAD.append(os.getloadavg()[0])
    recreate_database()
    try:
        run_worker(args.batch_size)  # on an empty stream: the CPU of start-up and shut-down alone
        startup_cpu = CPU["worker"]
        runs = []
        for run in range(args.runs):
            if run:
                remove_keys(client)
                recreate_database()
            frames = fill_stream(args.events, args.seed, args.actors)
            runs.append((*run_worker(args.batch_size), dict(CPU)))
            print(f"run {run + 1}: {runs[-1][1]:,.0f} events/s", flush=True)
        runs.sort(key=lambda run: run[1])
        rates = [rate for _, rate, _, _ in runs]
        elapsed, worker_rate, rss, cpu = runs[(len(runs) - 1) // 2]
        CPU.update(cpu)
        # What one worker would do with a core of its own and its PostgreSQL backend on another.
        cpu_bound_rate = args.events / max(CPU["worker"] - startup_cpu, CPU["postgres"])
        # What any overlap of the worker and PostgreSQL could reach on this machine's cores (Redis aside).
        cores = len(os.sched_getaffinity(0))
        machine_rate = args.events * cores / (CPU["worker"] - startup_cpu + CPU["postgres"])
        # How busy the worker process is while it runs: near 100%, its threads are bound by the GIL.
        worker_busy = (CPU["worker"] - startup_cpu) / (args.events / worker_rate)
        copy_seconds, rows = copy_ceiling()
        copy_rate = args.events / copy_seconds
        truncate()
        sample = frames[: args.naive_sample]
        naive_rate = len(sample) / naive_index(sample)
    finally:
        remove_keys(client)
        from django.db import connection

        connection.close()
        admin_sql(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    LOAD.append(os.getloadavg()[0])
    command = (f".venv/bin/python bench/worker_bench.py --events {args.events} --seed {args.seed}"
               f" --actors {args.actors} --batch-size {args.batch_size} --naive-sample {args.naive_sample}"
               f" --runs {args.runs}")
    median = "median of " + ", ".join(f"{rate:,.0f}" for rate in rates) if len(rates) > 1 else "one run"
    lines = [
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| run_worker events/s (one worker, batches of {args.batch_size}; {median}) | {worker_rate:,.0f} |"
        f" >= {TARGETS['rate']:,} | {'yes' if worker_rate >= TARGETS['rate'] else 'no'} |",
        f"| same, CPU-bound estimate (a free core each for the worker and PostgreSQL) | {cpu_bound_rate:,.0f} | | |",
        f"| same, ceiling of these {cores} cores (all of them kept busy by the worker and PostgreSQL) |"
        f" {machine_rate:,.0f} | | |",
        f"| worker process CPU while indexing, % of one core | {worker_busy:.0%} | | |",
        f"| raw COPY of the same {rows:,} rows, as events/s | {copy_rate:,.0f} | | |",
        f"| worker / COPY | {worker_rate / copy_rate:.2f} | >= {TARGETS['copy_ratio']} |"
        f" {'yes' if worker_rate / copy_rate >= TARGETS['copy_ratio'] else 'no'} |",
        f"| naive indexer events/s ({len(sample):,} events, one transaction each) | {naive_rate:,.0f} | | |",
        f"| worker / naive | {worker_rate / naive_rate:.1f} | >= {TARGETS['naive_ratio']} |"
        f" {'yes' if worker_rate / naive_rate >= TARGETS['naive_ratio'] else 'no'} |",
        f"| worker peak RSS | {rss:.0f} MB | < {TARGETS['rss_mb']} MB | {'yes' if rss < TARGETS['rss_mb'] else 'no'} |",
    ]
    print("\n".join(lines))
    print(f"(worker: {args.events:,} events in {elapsed:.1f} s from process start to exit,"
          f" {args.events / elapsed:,.0f} events/s overall; CPU: worker {CPU['worker']:.1f} s"
          f" ({startup_cpu:.1f} s of it start-up), its PostgreSQL backend {CPU['postgres']:.1f} s,"
          f" this script's sampling {CPU['sampler']:.1f} s)")
    if args.write:
        worker_us = (CPU["worker"] - startup_cpu) / args.events * 1e6
        postgres_us = CPU["postgres"] / args.events * 1e6
        section = (
            "## Worker\n\n"
            f"`{command}` on {cores} cores, {time.strftime('%Y-%m-%d')}; PostgreSQL, Redis and the worker"
            f" share the machine (load average {LOAD[0]:.1f} before the runs, {LOAD[1]:.1f} after them).\n\n"
            + "\n".join(lines) + "\n\n"
            "The worker's rate is measured from its first acknowledged batch to its last (cluster:metrics"
            f" sampled every {SAMPLE_SECONDS * 1000:.0f} ms); in {'the median' if len(rates) > 1 else 'this'} run,"
            f" from process start to exit, the {args.events:,} events took {elapsed:.1f} s"
            f" ({args.events / elapsed:,.0f} events/s, Django start-up included). CPU used meanwhile: the worker"
            f" process {CPU['worker']:.1f} s, of which {startup_cpu:.1f} s start-up and shut-down"
            f" ({worker_us:.0f} µs per event without them), its PostgreSQL backend {CPU['postgres']:.1f} s"
            f" ({postgres_us:.0f} µs per event). The CPU-bound estimate is the rate these CPU costs allow when"
            " the worker and its backend each have a core, as they would on a machine not shared with other"
            " jobs.\n\n"
            + ANALYSIS + "\n"
        )
        write_section(args.write, section)


ANALYSIS = """\
What sets the rate (profiled with py-spy, auto_explain, gc callbacks and the CPU time of each thread;
compare CPU per event rather than wall-clock rates across sessions: the host changes between them, and
the fourth session's final commit, in batches of 1000, ran at 5,775 events/s on its slower host and at
12,776 on this one):

- Batch size. One batch is one transaction, read, indexed and acknowledged in turn: the reader thread
  parses the next batch meanwhile, but the main thread's SQL building, its PostgreSQL round trips, the
  commit and the acknowledgement follow one another. Each batch also costs PostgreSQL the same
  statements (planned afresh: custom plans) and one lock and one count update per actor or post it
  touches, however many of its events name them. Larger batches spread both. A sweep on this host
  (100,000 events, 3 runs each, median; one read per batch then): batches of 1000, 2000, 3000, 5000
  gave 12,776, 16,273, 17,277, 18,400 events/s, with PostgreSQL at 44, 35, 32, 31 µs per event and the
  worker at 45, 41, 40, 40 µs per event, peak RSS 83, 97, 109, 136 MB. With 100,000 actors instead of
  the simulator's 5,000 (far fewer events per actor in a batch: `--actors 100000`): 11,489, 15,194,
  16,894 events/s for 1000, 3000, 5000, PostgreSQL 53, 39, 35 µs per event, RSS 89, 116, 143 MB. So
  run_worker now takes up to 5000 entries per batch (WORKER_BATCH_SIZE). A batch is what is waiting,
  up to that: at the live firehose's rate batches stay small and latency low; large batches happen
  under a backlog, which is when throughput matters.
- Memory. What a batch holds follows its bytes more than its count: a record's text is in the frame,
  the decoded record, the stored JSON and the statement's parameters. `bench/worker_memory.py` drains
  posts with long texts. Read 5000 at a time, posts with 3 kB texts (the longest a post may have)
  peaked at 323 MB (119 MB in batches of 1000), and 20 kB records at 680 MB. So a batch's new entries are
  now read in chunks of 500 until 5000 entries or 6 MB of frames, the chunks shrinking once frames are
  seen to be large: 163 MB for the 3 kB texts (122 MB in batches of 1000), 143 MB for the 20 kB records.
  The simulator's frames (0.9 kB on average) still make full batches.
- The ceiling: the "ceiling of these 2 cores" row is the rate the measured CPU per event (worker plus
  its PostgreSQL backend, Redis left out) would allow if both cores were busy all the time. Below it,
  the worker waits on PostgreSQL and PostgreSQL on the worker's Python, one batch step after another;
  the worker process cannot use more than one core (its GIL). More worker processes add up (see the
  end-to-end figures) until PostgreSQL and lock waits on popular actors are the limit.
- Half the COPY rate is not reached, and not near: COPY writes finished rows into the tables, at
  about 90,000-100,000 events/s on this host. It skips what makes the index exact and order
  independent: the newer-seq check of every upsert, the tombstone and purge checks, the actor-row locks
  that serialise concurrent workers per repo and per aggregate owner, and the aggregates; and the
  worker's share (parsing DAG-CBOR and CAR blocks, syntax checks, typed columns, the record's JSON:
  about half of its CPU) has no counterpart in COPY. In an earlier session's auto_explain breakdown (56
  µs per event then, in batches of 1000): the like upsert 20 µs (json_to_recordset, the ON CONFLICT
  protocol, four indexes), the post upsert 8, the count updates of existing posts 5, the counts of new
  posts 4, the actor-row locks 3.5, reposts 3.4, actor counts 3.2, new actor rows 3, follows 2.6.
- Taken, measured in earlier sessions: prepared statements with custom plans (-10% of PostgreSQL's
  CPU, -13% of the worker's); the garbage collector settled after start-up (it spent 16-21 µs per event
  rescanning live batches; worker CPU -15%, wall time -8%); the purge of deleted accounts in one round
  trip instead of nine.
- Measured and not taken: the raw record as json instead of jsonb (3-7 µs less per like in PostgreSQL,
  about 1.5% of the total, not worth a schema change), rows as binary arrays for unnest (psycopg dumps
  them at about 60 µs per row), jsonb_to_recordset (no faster than json_to_recordset), a plain INSERT
  that skips existing rows instead of ON CONFLICT (within the noise), a shorter or longer GIL switch
  interval and a deeper read-ahead queue (no difference beyond the noise).
- The benchmark itself samples every 50 ms and looks at each process once to find the PostgreSQL
  backends (an earlier sampler cost 59% of a core); its own CPU is printed with the figures.

The naive indexer (one transaction and ORM calls per record, +1 counters) is far behind, and its
counters are wrong under replays.
"""


if __name__ == "__main__":
    main()
