"""Soak run: the whole pipeline for a given time at a given rate, with a random fault every minute, then
the final database compared with a fault-free run of the same events. Not a test (not in CI).

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 2000] [--fault-every 60] [--seed 7]
                                   [--faults kill-worker,kill-firehose,...] [--doc docs/soak.md]

The faulty run uses a PostgreSQL and a Redis server of its own (tests/harness/servers.py), so that
faults can stop them; the relay also drops the connection, rewinds and sends malformed frames now and
then for the whole run. Every 5 s it samples the lag (the relay's newest seq minus the durable cursor),
the stream length and each process's resident memory. Then the same events go through a fault-free
pipeline (as fast as it goes) and the two databases are compared table by table, with the
cluster:metrics totals (unless Redis lost its data, which resets them: see the report).
Writes logs and samples to bench/output/soak-<time>/ and the report to --doc.
"""

import argparse
import contextlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from harness import compare  # noqa: E402
from harness.processes import Pipeline, Service  # noqa: E402
from harness.servers import (  # noqa: E402
    PostgresServer,
    RedisServer,
    scratch_database,
    throwaway_postgres,
    throwaway_redis,
)
from pipeline import redis_store  # noqa: E402

START_SEQ = 31_000_000_000
SAMPLE_SECONDS = 5.0
OUTAGE_SECONDS = 20.0
WORKERS_STOPPED_SECONDS = 30.0
MB = 1024 * 1024
ENV = {
    "WORKER_CLAIM_IDLE_MS": "5000",
    "FIREHOSE_STALL_SECONDS": "10",
    # Low enough that stopped workers make the firehose pause within the fault.
    "STREAM_HIGH_WATER": "40000",
    "STREAM_LOW_WATER": "20000",
}
# Relay misbehaviour for the whole faulty run.
RELAY_FAULTS = ["--drop-every", "150000", "--rewind-every", "50000", "--malformed-every", "40000"]


@dataclass
class Soak:
    """The faulty run's processes and servers, and what happened to them."""

    pipeline: Pipeline
    redis: RedisServer
    postgres: PostgresServer
    rng: random.Random
    started: float
    faults: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds, fault, detail)
    redis_lost_data: bool = False
    restarts: int = 0

    def workers(self) -> list[Service]:
        return [s for s in self.pipeline.services if s.args[0] == "run_worker" and s.running]

    def firehose(self) -> Service:
        return next(s for s in self.pipeline.services if s.name == "firehose")

    def inject(self, fault: str) -> None:
        at = time.monotonic() - self.started
        detail = FAULTS[fault](self)
        self.faults.append((at, fault, detail))
        print(f"[{at:6.0f} s] {fault}: {detail}", flush=True)

    # The faults: each returns once the system is back (services restarted, servers up), with what it did.

    def kill_worker(self) -> str:
        victim = self.rng.choice(self.workers())
        victim.kill()
        self.restarts += 1
        replacement = self.pipeline.worker(f"w-restart{self.restarts}")
        return f"SIGKILL {victim.name}, started {replacement.name}"

    def kill_firehose(self) -> str:
        firehose = self.firehose()
        firehose.kill()
        time.sleep(1.0)
        firehose.start(args=[arg for arg in firehose.args if arg not in ("--cursor", "0")])
        return "SIGKILL, restarted after 1 s without --cursor"

    def redis_restart_empty(self) -> str:
        self.redis.restart_empty()
        self.redis_lost_data = True
        return "redis-server killed and restarted without its data"

    def redis_down(self) -> str:
        self.redis.stop(keep_data=True)
        time.sleep(OUTAGE_SECONDS)
        self.redis.start()
        return f"redis-server stopped for {OUTAGE_SECONDS:.0f} s (data kept)"

    def postgres_down(self) -> str:
        self.postgres.stop()
        time.sleep(OUTAGE_SECONDS)
        self.postgres.start()
        return f"PostgreSQL stopped for {OUTAGE_SECONDS:.0f} s"

    def workers_stopped(self) -> str:
        workers = self.workers()
        for worker in workers:
            worker.signal(signal.SIGSTOP)
        time.sleep(WORKERS_STOPPED_SECONDS)
        for worker in workers:
            worker.signal(signal.SIGCONT)
        return f"{len(workers)} workers frozen (SIGSTOP) for {WORKERS_STOPPED_SECONDS:.0f} s"


FAULTS = {
    "kill-worker": Soak.kill_worker,
    "kill-firehose": Soak.kill_firehose,
    "redis-restart-empty": Soak.redis_restart_empty,
    "redis-down": Soak.redis_down,
    "postgres-down": Soak.postgres_down,
    "workers-stopped": Soak.workers_stopped,
}


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: lag, stream length, firehose state and resident memory of each process.
    Reads that fail (a server is down) leave that value out of the sample."""

    def __init__(self, soak: Soak, path: Path) -> None:
        super().__init__(daemon=True)
        self.soak = soak
        self.path = path
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def relay_head(self) -> int | None:
        heads = re.findall(r"head seq (\d+)", self.soak.pipeline.services[0].log()[-20_000:])
        return int(heads[-1]) if heads else None

    def sample(self) -> dict[str, Any]:
        pipeline = self.soak.pipeline
        row: dict[str, Any] = {"t": round(time.monotonic() - self.soak.started, 1), "load": os.getloadavg()[0],
                               "rss_mb": {}}
        with contextlib.suppress(Exception):
            row["relay_head"] = self.relay_head()
        with contextlib.suppress(Exception):
            row["durable_cursor"] = pipeline.durable_cursor()
        with contextlib.suppress(Exception), pipeline.redis() as client:
            row["stream_length"] = client.xlen(redis_store.events_stream())
            status = client.get(redis_store.firehose_status())
            row["paused"] = bool(status) and json.loads(status).get("paused") is True
        if row.get("relay_head") and row.get("durable_cursor"):
            row["lag_events"] = row["relay_head"] - row["durable_cursor"]
        processes = {s.name: s.pid for s in pipeline.services if s.running}
        if self.soak.redis.process is not None:
            processes["redis-server"] = self.soak.redis.process.pid
        for name, pid in processes.items():
            with contextlib.suppress(psutil.Error):
                row["rss_mb"][name] = round(psutil.Process(pid).memory_info().rss / MB, 1)
        return row

    def run(self) -> None:
        with self.path.open("w") as out:
            while not self.halt.wait(SAMPLE_SECONDS):
                row = self.sample()
                self.samples.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()


def relay_args(events: int, rate: float, seed: int) -> list[str]:
    return ["--events", str(events), "--seed", str(seed), "--start-seq", str(START_SEQ), "--rate", str(rate),
            "--backlog-mb", "4096", "--log-interval", "1"]


def run_faulty(args: argparse.Namespace, output: Path) -> tuple[compare.Snapshot, Soak, Sampler, float]:
    events = int(args.minutes * 60 * args.rate)
    last_seq = START_SEQ + events - 1
    fault_names = args.faults.split(",")
    rng = random.Random(args.seed)
    # Every fault once before any repeats, in a random order.
    schedule = [name for _ in range(100) for name in rng.sample(fault_names, len(fault_names))]
    with throwaway_postgres() as postgres, throwaway_redis() as redis_server:
        url = postgres.create_database("appview")
        with Pipeline(database_url=url, redis_url=redis_server.url, output_dir=output / "faulty",
                      env=ENV) as pipeline:
            pipeline.relay(*relay_args(events, args.rate, args.seed), *RELAY_FAULTS, timeout=600)
            pipeline.firehose("--cursor", "0")
            for index in range(1, args.workers + 1):
                pipeline.worker(f"w{index}")
            soak = Soak(pipeline=pipeline, redis=redis_server, postgres=postgres, rng=rng, started=time.monotonic())
            sampler = Sampler(soak, output / "samples.jsonl")
            sampler.start()
            duration = events / args.rate
            next_fault = args.fault_every
            while next_fault < duration:
                time.sleep(max(0.0, soak.started + next_fault - time.monotonic()))
                soak.inject(schedule.pop(0))
                pipeline.check_alive()
                next_fault += args.fault_every
            time.sleep(max(0.0, soak.started + duration - time.monotonic()))
            emitted_at = time.monotonic()
            pipeline.wait_indexed(last_seq, timeout=args.drain_timeout)
            drain_seconds = time.monotonic() - emitted_at
            sampler.halt.set()
            sampler.join()
            codes = pipeline.stop()
            if any(code != 0 for code in codes.values()):
                print(f"warning: exit codes after SIGTERM: {codes}", flush=True)
        with redis_server.client() as client:
            result = compare.take_snapshot(url, client)
    return result, soak, sampler, drain_seconds


def run_fault_free(args: argparse.Namespace, output: Path) -> compare.Snapshot:
    events = int(args.minutes * 60 * args.rate)
    with throwaway_redis() as redis_server, scratch_database() as url:
        with Pipeline(database_url=url, redis_url=redis_server.url, output_dir=output / "fault-free",
                      env={"WORKER_CLAIM_IDLE_MS": "5000"}) as pipeline:
            pipeline.relay(*relay_args(events, 0, args.seed), timeout=600)
            pipeline.firehose("--cursor", "0")
            for index in range(1, args.workers + 1):
                pipeline.worker(f"w{index}")
            pipeline.wait_indexed(START_SEQ + events - 1, timeout=args.drain_timeout * 4)
            pipeline.stop()
        with redis_server.client() as client:
            return compare.take_snapshot(url, client)


def resume_cursor_after_loss(soak: Soak) -> int | None:
    """The durable cursor run_firehose resumed from after the last loss of Redis's data."""
    found = re.findall(r"resuming from cursor (\d+) \(durable cursor in PostgreSQL\)", soak.firehose().log())
    return int(found[-1]) if found else None


def report(args: argparse.Namespace, soak: Soak, sampler: Sampler, drain_seconds: float, faulty: compare.Snapshot,
           expected: compare.Snapshot, output: Path) -> tuple[str, str]:
    """The heading and the text of this run's section of the soak document."""
    events = int(args.minutes * 60 * args.rate)
    table_diff = compare.diff(expected, faulty, metric_fields=None)
    metric_diff = ", ".join(f"{name} {faulty.metrics.get(name, 0):,} instead of {expected.metrics.get(name, 0):,}"
                            for name in compare.METRIC_FIELDS
                            if faulty.metrics.get(name, 0) != expected.metrics.get(name, 0))
    lags = [row["lag_events"] for row in sampler.samples if "lag_events" in row]
    loads = sorted(row["load"] for row in sampler.samples if "load" in row)
    names = sorted({name for row in sampler.samples for name in row["rss_mb"]})
    peak = {name: max(row["rss_mb"].get(name, 0.0) for row in sampler.samples) for name in names}
    last = sampler.samples[-1]["rss_mb"] if sampler.samples else {}
    heading = f"## {args.minutes:g} minutes at {args.rate:g} events/s, faults: {args.faults.replace(',', ', ')}"
    lines = [
        f"`.venv/bin/python bench/soak.py --minutes {args.minutes:g} --rate {args.rate:g} "
        f"--fault-every {args.fault_every:g} --seed {args.seed} --faults {args.faults}` on {os.cpu_count()} "
        f"cores, {time.strftime('%Y-%m-%d')}, median load average {loads[len(loads) // 2] if loads else 0:.1f} "
        f"(other work shared the machine). Logs and samples: `{output.relative_to(BASE_DIR)}/`.",
        "",
        f"{events:,} synthetic events at {args.rate:g}/s through run_relay_sim (which also dropped the "
        "connection every 150,000 events, re-sent 3 old events every 50,000 and sent a malformed frame "
        f"every 40,000), run_firehose and {args.workers} run_workers, on a PostgreSQL and a Redis of the "
        "run's own, with these faults:",
        "",
        "| at (s) | fault | what |",
        "|---:|---|---|",
        *[f"| {at:.0f} | {name} | {detail} |" for at, name, detail in soak.faults],
        "",
        "### Result",
        "",
        f"- Database (every table, every column but write times) compared with a fault-free run of the same "
        f"events: **{'identical' if not table_diff else 'DIFFERENT'}**"
        f" ({sum(expected.counts().values()):,} rows).",
    ]
    if table_diff:
        lines += ["", "```", table_diff[:5000], "```", ""]
    total = faulty.metrics.get("totalEvents", 0)
    if soak.redis_lost_data:
        resumed = resume_cursor_after_loss(soak)
        wanted = None if resumed is None else START_SEQ + events - 1 - resumed
        lines.append(
            "- cluster:metrics: Redis lost its data (redis-restart-empty), so the counters restarted from zero. "
            f"totalEvents ended at {total:,} of {events:,}: the events above the durable cursor "
            f"{resumed} from which run_firehose resumed after the last loss, each counted once "
            f"(**{'exact' if total == wanted else f'expected {wanted}'}**). No event was lost: the database is "
            "what counts."
        )
    else:
        lines.append(f"- cluster:metrics totals: **{'exact' if not metric_diff else 'DIFFERENT'}** "
                     f"(totalEvents {total:,}){': ' + metric_diff if metric_diff else ''}.")
    lines += [
        f"- Lag (relay's newest seq minus the durable cursor, sampled every {SAMPLE_SECONDS:g} s): median "
        f"{sorted(lags)[len(lags) // 2] if lags else 0:,} events, max {max(lags, default=0):,} events "
        f"({max(lags, default=0) / args.rate:.1f} s at {args.rate:g}/s); everything was indexed "
        f"{drain_seconds:.1f} s after the relay sent its last event.",
        "",
        "Resident memory per process (MB), peak and at the end. The relay simulator holds the whole "
        "stream, encoded ahead, in memory: that is the simulator, not the pipeline.",
        "",
        "| process | peak | end |",
        "|---|---:|---:|",
        *[f"| {name} | {peak[name]:.0f} | {f'{last[name]:.0f}' if name in last else 'killed'} |" for name in names],
        "",
    ]
    return heading, "\n".join(lines)


DOC_INTRO = """# Soak

`bench/soak.py` runs the whole pipeline for a given time at a given rate with a random fault every
minute (each fault once before any repeats), then compares the final database and the cluster:metrics
totals with a fault-free run of the same events. The fault-by-fault suite is tests/test_faults.py
(docs/reliability.md). Each run below is the section of its settings; a new run replaces it.
"""


def update_doc(path: Path, heading: str, text: str) -> None:
    """Replaces (or adds) the section under ``heading`` in the soak document, keeping the others."""
    document = path.read_text() if path.exists() else DOC_INTRO
    sections = re.split(r"(?m)^(?=## )", document)
    section = f"{heading}\n\n{text}\n"
    kept = [part for part in sections[1:] if part.split("\n", 1)[0] != heading]
    path.write_text(sections[0].rstrip("\n") + "\n\n" + "\n".join(part.rstrip("\n") + "\n" for part in
                                                                   [*kept, section]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, from: " + ", ".join(FAULTS))
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--doc", type=Path, default=BASE_DIR / "docs" / "soak.md")
    args = parser.parse_args()
    unknown = set(args.faults.split(",")) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    output = BASE_DIR / "bench" / "output" / time.strftime("soak-%Y%m%d-%H%M%S")
    output.mkdir(parents=True)
    faulty, soak, sampler, drain_seconds = run_faulty(args, output)
    print("faulty run done; now the fault-free run of the same events", flush=True)
    expected = run_fault_free(args, output)
    heading, text = report(args, soak, sampler, drain_seconds, faulty, expected, output)
    (output / "report.md").write_text(f"{heading}\n\n{text}\n")
    update_doc(args.doc, heading, text)
    print(f"{heading}\n\n{text}")


if __name__ == "__main__":
    main()
