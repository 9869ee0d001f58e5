"""End-to-end benchmark: the whole pipeline on this machine, with real processes on loopback.

    .venv/bin/python bench/e2e.py [--seconds 60] [--rate 2000] [--workers 1,2] [--events N]

Each phase gets a throwaway redis-server and a fresh migrated database on the machine's PostgreSQL
(copied from one migrated template, all dropped at exit), and starts the real commands through
``harness.Pipeline``:

1. Throughput (catch-up), once per ``--workers`` count: ``run_relay_sim`` replays a recording of
   ``--events`` synthetic events as fast as it can send them (the recording is made once and cached in
   bench/output/), ``run_firehose`` reads from cursor 0, N ``run_worker``s index. The rate is
   ``cluster:metrics`` totalEvents sampled every 0.5 s, over ``--seconds`` after ``--warmup`` seconds.
   After the first of these windows, py-spy profiles the slowest stage (the workers when the stream
   backs up behind them, else run_firehose) for ``--profile-seconds``, twice: CPU samples, then the
   main thread's wall-clock time with waits included.
2. Latency, once per ``--rate``: ``run_relay_sim`` generates events live at that rate, one worker
   indexes; p50/p95/p99 come from the difference of two snapshots of the worker's histogram
   ``cluster:latency`` (commit time minus the time run_firehose read the event), taken after the
   warm-up and at the end of the window.
3. Baselines on the same events (functions of bench/worker_bench.py): a raw ``COPY`` of the rows the
   first throughput phase committed (the ceiling), and the naive indexer (one event per transaction)
   on the first ``--naive-events`` events of the recording.

Throughout, every process's resident memory (with its children), XLEN and the state of the phase
database's PostgreSQL backends (pg_stat_activity: executing, waiting for a lock, waiting for the worker)
are sampled every 0.5 s, and the CPU each process used in the window is read from /proc: on a 2-core
machine the relay simulator, run_firehose, the workers, Redis and PostgreSQL all share the same cores,
and the CPU tables say who used them and how much per committed event. Run it on an otherwise idle
machine: the report shows how much CPU other processes took. Prints a report and rewrites the
"End-to-end" section of docs/benchmarks.md (other sections are kept; --no-doc leaves the file alone);
logs, profiles and the report stay in bench/output/e2e-<time>/. Not a test: nothing here asserts.
"""

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import psutil
import psycopg
import redis

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.worker_bench import PostgresProcesses, copy_ceiling, naive_index  # noqa: E402
from harness.processes import Pipeline, PipelineError, Service, wait_until  # noqa: E402
from harness.servers import (  # noqa: E402
    RedisServer,
    connect,
    database_name,
    scratch_database,
    shared_admin_url,
    throwaway_redis,
)

OUTPUT_DIR = BASE_DIR / "bench" / "output"
DOC_PATH = BASE_DIR / "docs" / "benchmarks.md"
SECTION_TITLE = "## End-to-end"
SAMPLE_SECONDS = 0.5
TREND_SECONDS = 10.0
MB = 1024 * 1024
# The recording is sized for a pipeline this fast; a faster one runs out early and the report says so.
SIZING_RATE = 12_000
PROJECT_PACKAGES = ("appview", "firehose", "dashboard")
# Server settings that bound a write-heavy run; the machine's server keeps Debian's defaults.
PG_SETTINGS = ("shared_buffers", "max_wal_size", "synchronous_commit", "fsync")

# Targets of issue 7.
TARGET_RATE = 10_000
TARGET_P99_MS = 1000
TARGET_RSS_MB = 200
TARGET_COPY_SHARE = 0.5
TARGET_NAIVE_FACTOR = 10


# -- the machine ----------------------------------------------------------------------------------------


def machine_description(database_url: str, redis_client: redis.Redis) -> dict[str, str]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    with connect(database_url) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        pg_settings = ", ".join(f"{name} {conn.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
                                for name in PG_SETTINGS)
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model,
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "postgresql": str(pg_version),
        "postgresql_settings": pg_settings,
        "redis": str(redis_client.info("server")["redis_version"]),
        "python": platform.python_version(),
        "load": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }


# -- processes, memory and CPU ---------------------------------------------------------------------------


def tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in tree(process):
        with suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def tree_cpu(process: psutil.Process) -> float:
    total = 0.0
    for member in tree(process):
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + getattr(times, "steal", 0.0)


def backend_state(state: str | None, wait_type: str | None, wait_event: str | None) -> str:
    """What a PostgreSQL backend of the pipeline is doing, in the terms that explain a rate: executing,
    waiting for another transaction's lock, for the disk, or for its worker to send the next statement."""
    if state == "active":
        if wait_type is None:
            return "executing (CPU)"
        if wait_type == "Lock":
            return f"waiting for a lock ({wait_event})"
        return f"waiting: {wait_type} {wait_event}"
    if state == "idle in transaction":
        return "idle in transaction (waiting for its worker)"
    if state == "idle":
        return "idle between transactions"
    return str(state)


def wait_shares(waits: list[tuple[float, str]], start: float, end: float) -> dict[str, float]:
    states = Counter(state for at, state in waits if start <= at <= end)
    total = sum(states.values())
    return {state: count / total for state, count in states.items()} if total else {}


@dataclass
class CpuSnapshot:
    at: float
    groups: dict[str, dict[int, float]]  # group -> pid -> CPU seconds
    machine: float


@dataclass
class Sampler:
    """Samples, every 0.5 s in a thread: totalEvents, XLEN and the RSS of every process; keeps peaks."""

    pipeline: Pipeline
    redis_server: RedisServer
    database: str
    metrics: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, totalEvents)
    peak_rss: dict[str, int] = field(default_factory=dict)
    peak_xlen: int = 0
    waits: list[tuple[float, str]] = field(default_factory=list)  # (time, state of one backend)
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._client = self.pipeline.redis()
        # pg_stat_activity is cluster-wide: read from the maintenance database, so that this connection
        # is not one of the phase database's backends whose CPU and states are measured.
        self._pg_admin = connect(shared_admin_url())
        self._postgres = PostgresProcesses(self.database)
        from pipeline import redis_store

        self._metrics_key = redis_store.cluster_metrics()
        self._stream_key = redis_store.events_stream()

    def processes(self) -> dict[str, psutil.Process]:
        """Our processes by name (relay, firehose, w1, ...; redis-server), those running now."""
        found: dict[str, psutil.Process] = {}
        for service in self.pipeline.services:
            if service.running:
                with suppress(psutil.Error):
                    found[service.name] = psutil.Process(service.pid)
        if self.redis_server.process is not None:
            found["redis-server"] = psutil.Process(self.redis_server.process.pid)
        return found

    def postgres(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """The backends serving the phase's database and the server's background processes."""
        self._postgres.scan()
        return list(self._postgres.backends.values()), list(self._postgres.background.values())

    def start(self) -> "Sampler":
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pg_admin.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except (redis.RedisError, psutil.Error, psycopg.Error) as exc:
                self.error = f"sampler: {exc}"
            self._stop.wait(max(0.0, SAMPLE_SECONDS - (time.monotonic() - started)))

    def sample(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.hget(self._metrics_key, "totalEvents")
        pipe.xlen(self._stream_key)
        total, xlen = pipe.execute()
        self.metrics.append((time.monotonic(), int(total or 0)))
        self.peak_xlen = max(self.peak_xlen, int(xlen))
        for name, process in self.processes().items():
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), tree_rss(process))
        ours, _ = self.postgres()
        for process in ours:
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            self.peak_rss["postgres backend"] = max(self.peak_rss.get("postgres backend", 0), rss)
        now = time.monotonic()
        rows = self._pg_admin.execute(
            "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
            " WHERE datname = %s AND backend_type = 'client backend'", [self.database]).fetchall()
        self.waits += [(now, backend_state(*row)) for row in rows]

    def total_events(self) -> int:
        return self.metrics[-1][1] if self.metrics else 0

    def cpu_snapshot(self) -> CpuSnapshot:
        groups: dict[str, dict[int, float]] = {}
        for name, process in self.processes().items():
            groups[name] = {process.pid: tree_cpu(process)}
        ours, background = self.postgres()
        groups["postgres (this database)"] = {p.pid: tree_cpu(p) for p in ours}
        groups["postgres (background)"] = {p.pid: tree_cpu(p) for p in background}
        return CpuSnapshot(at=time.monotonic(), groups=groups, machine=machine_busy_seconds())


def cpu_shares(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """CPU used between two snapshots, per group, in % of one core; "other" is whatever else ran on the
    machine (other sessions' tests, say), which disturbs the figures when it is large."""
    elapsed = max(end.at - start.at, 1e-9)
    shares: dict[str, float] = {}
    for name, pids in end.groups.items():
        before = start.groups.get(name, {})
        # A backend that appeared during the window counts from 0: workers connect once, at start.
        used = sum(seconds - before.get(pid, 0.0) for pid, seconds in pids.items())
        shares[name] = used / elapsed * 100
    machine = (end.machine - start.machine) / elapsed * 100
    shares["other"] = max(0.0, machine - sum(shares.values()))
    shares["machine"] = machine
    return shares


# -- latency -----------------------------------------------------------------------------------------------


def read_latency(client: redis.Redis) -> dict[str, int]:
    from pipeline import redis_store

    raw = client.hgetall(redis_store.latency_histogram())
    return {key.decode(): int(value) for key, value in raw.items()}


def _bound(name: str) -> float:
    return float("inf") if name == "+inf" else float(name)


def latency_percentiles(before: dict[str, int], after: dict[str, int],
                        wanted: tuple[float, ...] = (0.5, 0.95, 0.99)) -> tuple[int, dict[float, float]]:
    """The events counted between two histogram snapshots, and for each wanted fraction the upper bound
    in ms of the bucket holding it (inf: the +inf bucket): the histogram cannot say more than that."""
    counts = sorted((_bound(name), after.get(name, 0) - before.get(name, 0)) for name in after)
    total = sum(count for _, count in counts)
    result: dict[float, float] = {}
    if total == 0:
        return 0, result
    for fraction in wanted:
        seen = 0
        for bound, count in counts:
            seen += count
            if seen >= fraction * total:
                result[fraction] = bound
                break
    return total, result


def fmt_latency(bound: float | None) -> str:
    if bound is None:
        return "n/a"
    return "> 60 s" if bound == float("inf") else f"<= {bound:g} ms"


# -- profile -----------------------------------------------------------------------------------------------


@dataclass
class Profile:
    stage: str
    why: str
    path: Path
    seconds: float
    sampled: float  # seconds of CPU samples
    cpu_percent: float  # of one core, psutil, over the profile
    by_function: list[tuple[str, float]]  # self time, share of samples
    by_module: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]  # project frames, inclusive share
    error: str | None = None
    wall_path: Path | None = None
    wall_self: list[tuple[str, float]] = field(default_factory=list)  # main thread, idle samples included
    wall_inclusive: list[tuple[str, float]] = field(default_factory=list)
    wall_error: str | None = None


def _module_of(path: str) -> str:
    """A short name for where a frame's code lives: the project file, or the third-party package."""
    text = path.replace("\\", "/")
    base = str(BASE_DIR) + "/"
    if text.startswith(base) and "/.venv/" not in text:
        return text[len(base):]
    match = re.search(r"site-packages/([^/]+)", text)
    if match:
        return match.group(1).removesuffix(".py")
    match = re.search(r"python3\.\d+/([^/]+)", text)
    return f"stdlib {match.group(1).removesuffix('.py')}" if match else text.rsplit("/", 1)[-1]


def summarise_speedscope(path: Path, *, thread: str | None = None, top: int = 12, outer: float = 0.9) -> tuple[
        float, list[tuple[str, float]], list[tuple[str, float]], list[tuple[str, float]]]:
    """Self time by function and by module, and inclusive time of the project's own functions, from a
    py-spy speedscope file (every thread together, or the one named ``thread``; stacks are root first).
    Frames of one function at different lines are counted as that function; outer frames present in
    more than ``outer`` of the samples (the command and its loop) are left out of the inclusive list."""
    data = json.loads(path.read_text())
    modules = [_module_of(frame.get("file", "?")) for frame in data["shared"]["frames"]]
    functions = [f"{frame['name']} ({module})" for frame, module in zip(data["shared"]["frames"], modules,
                                                                         strict=True)]
    own = [module.endswith(".py") and module.split("/", 1)[0] in PROJECT_PACKAGES for module in modules]
    self_time: Counter[str] = Counter()
    module_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0.0
    for profile in data["profiles"]:
        if thread is not None and not profile["name"].endswith(f'"{thread}"'):
            continue
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            total += weight
            self_time[functions[stack[-1]]] += weight
            module_time[modules[stack[-1]]] += weight
            for name in {functions[index] for index in stack if own[index]}:
                inclusive[name] += weight
    if total == 0:
        return 0.0, [], [], []

    def shares(counter: Counter[str], limit: float = 1.0) -> list[tuple[str, float]]:
        ranked = [(name, value / total) for name, value in counter.most_common() if value / total < limit]
        return ranked[:top]

    return total, shares(self_time), shares(module_time), shares(inclusive, limit=outer)


def py_spy(pid: int, path: Path, seconds: float, *, idle: bool) -> str | None:
    """Records ``pid`` for ``seconds`` into a speedscope file; returns an error text, or None."""
    command = [str(Path(sys.executable).with_name("py-spy")), "record", "-o", str(path), "--format", "speedscope",
               "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100", *(["--idle"] if idle else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if result.returncode != 0 or not path.exists():
        return f"py-spy failed ({result.returncode}): {(result.stderr or result.stdout)[-500:]}"
    return None


def profile_process(process: Service, *, stage: str, why: str, seconds: float, output: Path) -> Profile:
    """Two py-spy recordings of one process, one after the other: CPU samples only (where the CPU goes),
    then every sample of the main thread, idle included (where its wall-clock time goes, waits on
    PostgreSQL and Redis included)."""
    path = output / f"profile-{process.name}-cpu.speedscope.json"
    ps = psutil.Process(process.pid)
    cpu_before, started = tree_cpu(ps), time.monotonic()
    error = py_spy(process.pid, path, seconds, idle=False)
    cpu_percent = (tree_cpu(ps) - cpu_before) / max(time.monotonic() - started, 1e-9) * 100
    profile = Profile(stage, why, path, seconds, 0.0, cpu_percent, [], [], [], error=error)
    if error is None:
        profile.sampled, profile.by_function, profile.by_module, profile.inclusive = summarise_speedscope(path)
    profile.wall_path = output / f"profile-{process.name}-wall.speedscope.json"
    profile.wall_error = py_spy(process.pid, profile.wall_path, seconds, idle=True)
    if profile.wall_error is None:
        _, profile.wall_self, _, profile.wall_inclusive = summarise_speedscope(
            profile.wall_path, thread="MainThread", top=16, outer=0.97)
    return profile


@dataclass
class Baseline:
    kind: str  # copy or naive
    name: str
    events: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


# -- phases ------------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    workers: int
    offered: str  # what the relay was asked for
    window: float = 0.0
    events: int = 0  # committed in the window
    rate: float = 0.0
    per_second: tuple[float, float, float] = (0.0, 0.0, 0.0)  # min, median, max of 1-s rates
    peak_rss: dict[str, int] = field(default_factory=dict)
    peak_xlen: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    waits: dict[str, float] = field(default_factory=dict)  # backend state -> share of samples
    trend: tuple[float, float] = (0.0, 0.0)  # events/s in the first and the last 10 s of the window
    latency_events: int = 0
    latency: dict[float, float] = field(default_factory=dict)  # fraction -> bucket upper bound, ms
    note: str = ""


@dataclass
class Context:
    options: argparse.Namespace
    template: str  # a migrated, empty database, copied for every phase
    output: Path


def rates_in(metrics: list[tuple[float, int]], start: float, end: float) -> tuple[float, float, float]:
    """Min, median and max of the per-second rates between two times (samples 1 s apart)."""
    window = [(t, n) for t, n in metrics if start <= t <= end]
    step = max(1, round(1.0 / SAMPLE_SECONDS))
    rates = [(window[i][1] - window[i - step][1]) / (window[i][0] - window[i - step][0])
             for i in range(step, len(window), step)]
    if not rates:
        return (0.0, 0.0, 0.0)
    return (min(rates), median(rates), max(rates))


def rate_between(metrics: list[tuple[float, int]], start: float, end: float) -> float:
    """events/s between the first and the last sample taken within [start, end]."""
    window = [(t, n) for t, n in metrics if start <= t <= end]
    if len(window) < 2:
        return 0.0
    return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])


def watch(pipeline: Pipeline, sampler: Sampler, seconds: float, *, until_total: int | None = None) -> float:
    """Waits ``seconds`` (less if ``until_total`` events are committed), checking that nothing died."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        pipeline.check_alive()
        if sampler.error:
            raise PipelineError(sampler.error)
        if until_total is not None and sampler.total_events() >= until_total:
            break
        time.sleep(SAMPLE_SECONDS)
    return time.monotonic() - started


def wait_first_event(pipeline: Pipeline, sampler: Sampler, timeout: float) -> None:
    def indexed() -> bool:
        pipeline.check_alive()
        return sampler.total_events() > 0

    wait_until(indexed, timeout=timeout, interval=SAMPLE_SECONDS, message="the first event to be indexed")


def wait_relay_listening(relay: Service, timeout: float) -> None:
    def listening() -> bool:
        if relay.died():
            raise PipelineError(f"run_relay_sim exited:\n{relay.log()[-3000:]}")
        return "listening on" in relay.log()

    wait_until(listening, timeout=timeout, interval=0.5, message="run_relay_sim to listen")


@contextmanager
def phase_servers(ctx: Context) -> Iterator[tuple[RedisServer, str]]:
    with throwaway_redis() as redis_server, scratch_database(template=ctx.template) as database_url:
        # The previous phase's dirty pages would otherwise be written out by the checkpointer during this one.
        with connect(database_url) as conn:
            conn.execute("CHECKPOINT")
        yield redis_server, database_url


def throughput_phase(ctx: Context, *, workers: int, recording: Path, events: int,
                     profile: bool) -> tuple[Phase, Profile | None, Baseline | None]:
    """Catch-up from a recording: returns the phase and, when asked (the first phase), the profile of the
    slowest stage and the COPY ceiling on the rows the phase committed."""
    options = ctx.options
    phase = Phase(name=f"throughput, {workers} worker{'s' if workers > 1 else ''}", workers=workers,
                  offered=f"replay of {events:,} events, as fast as possible")
    output = ctx.output / f"throughput-{workers}w"
    with phase_servers(ctx) as (redis_server, database_url), \
            Pipeline(database_url=database_url, redis_url=redis_server.url, output_dir=output) as pipeline:
        # Enough room for every frame: a relay evicting events would cut a slow reader off.
        backlog_mb = recording.stat().st_size / MB * 1.5 + 64
        relay = pipeline.relay("--replay", str(recording), "--rate", "0", "--backlog-mb", f"{backlog_mb:.0f}")
        wait_relay_listening(relay, timeout=600)
        pipeline.firehose("--cursor", "0")
        worker_services = [pipeline.worker(f"w{index}") for index in range(1, workers + 1)]
        sampler = Sampler(pipeline, redis_server, database_name(database_url)).start()
        profiled = None
        try:
            wait_first_event(pipeline, sampler, timeout=120)
            print(f"  {phase.name}: first event indexed; warming up {options.warmup:g} s", flush=True)
            watch(pipeline, sampler, options.warmup)
            measure(phase, pipeline, sampler, options.seconds, until_total=events)
            if sampler.total_events() >= events:
                phase.note = (f"the {events:,} events ran out after {phase.window:.0f} s of the "
                              f"{options.seconds:g} s window: pass a larger --events")
            print(f"  {phase.name}: {phase.rate:,.0f} events/s over {phase.window:.0f} s", flush=True)
            if profile:
                profiled = profile_slowest(pipeline, sampler, seconds=options.profile_seconds, output=output)
            # Workers first, each finishing its batch: the database then holds what totalEvents counts.
            for service in worker_services:
                service.terminate()
            phase.peak_rss, phase.peak_xlen = dict(sampler.peak_rss), sampler.peak_xlen
        finally:
            sampler.stop()
        pipeline.stop()
        copy_result = None
        if profile:
            committed = read_total(pipeline)
            print(f"  COPY ceiling: the rows of {committed:,} events", flush=True)
            copy_result = copy_baseline(database_url, committed)
    return phase, profiled, copy_result


def measure(phase: Phase, pipeline: Pipeline, sampler: Sampler, seconds: float, *,
            until_total: int | None = None) -> None:
    """Runs the measurement window and fills in the phase's rate, CPU and backend states."""
    cpu_start, start_total, start = sampler.cpu_snapshot(), sampler.total_events(), time.monotonic()
    phase.window = watch(pipeline, sampler, seconds, until_total=until_total)
    cpu_end, end_total, end = sampler.cpu_snapshot(), sampler.total_events(), time.monotonic()
    phase.events = end_total - start_total
    phase.rate = phase.events / max(end - start, 1e-9)
    phase.per_second = rates_in(sampler.metrics, start, end)
    phase.trend = (rate_between(sampler.metrics, start, start + TREND_SECONDS),
                   rate_between(sampler.metrics, end - TREND_SECONDS, end))
    phase.cpu = cpu_shares(cpu_start, cpu_end)
    phase.waits = wait_shares(sampler.waits, start, end)


def read_total(pipeline: Pipeline) -> int:
    from pipeline import redis_store

    with pipeline.redis() as client:
        return int(client.hget(redis_store.cluster_metrics(), "totalEvents") or 0)


def profile_slowest(pipeline: Pipeline, sampler: Sampler, *, seconds: float, output: Path) -> Profile:
    """Profiles the workers when the stream backs up behind them (they are the slowest stage), else
    run_firehose; the choice and its reason go into the report."""
    from pipeline import redis_store

    with pipeline.redis() as client:
        backlog = int(client.xlen(redis_store.events_stream()))
    services = {service.name: service for service in pipeline.services if service.running}
    if backlog > 5_000 or sampler.peak_xlen > 50_000:
        stage, process = "run_worker", services["w1"]
        why = (f"the stream backed up behind the workers (peak XLEN {sampler.peak_xlen:,}, {backlog:,} entries "
               "when the profile started), so the workers are the slowest stage")
    else:
        stage, process = "run_firehose", services["firehose"]
        why = (f"the stream stayed short (peak XLEN {sampler.peak_xlen:,}): the workers keep up and "
               "run_firehose (with the relay) sets the pace")
    print(f"  profiling {stage} (pid {process.pid}) for {seconds:g} s with py-spy", flush=True)
    return profile_process(process, stage=stage, why=why, seconds=seconds, output=output)


def latency_phase(ctx: Context, *, rate: float) -> Phase:
    options = ctx.options
    phase = Phase(name=f"latency at {rate:,.0f}/s", workers=1, offered=f"live synthetic events at {rate:,.0f}/s")
    output = ctx.output / f"latency-{rate:g}"
    with phase_servers(ctx) as (redis_server, database_url), \
            Pipeline(database_url=database_url, redis_url=redis_server.url, output_dir=output) as pipeline:
        relay = pipeline.relay("--rate", f"{rate:g}", "--seed", str(options.seed))
        wait_relay_listening(relay, timeout=120)
        pipeline.firehose()
        pipeline.worker("w1")
        sampler = Sampler(pipeline, redis_server, database_name(database_url)).start()
        try:
            wait_first_event(pipeline, sampler, timeout=120)
            print(f"  {phase.name}: first event indexed; warming up {options.warmup:g} s", flush=True)
            watch(pipeline, sampler, options.warmup)
            with pipeline.redis() as client:
                before = read_latency(client)
            measure(phase, pipeline, sampler, options.seconds)
            with pipeline.redis() as client:
                after = read_latency(client)
            phase.latency_events, phase.latency = latency_percentiles(before, after)
            if not after:
                phase.note = "cluster:latency stayed empty: the workers wrote no latency histogram"
            phase.peak_rss, phase.peak_xlen = dict(sampler.peak_rss), sampler.peak_xlen
            print(f"  {phase.name}: {phase.rate:,.0f} events/s, p50 {fmt_latency(phase.latency.get(0.5))}, "
                  f"p99 {fmt_latency(phase.latency.get(0.99))}", flush=True)
        finally:
            sampler.stop()
    return phase


# -- baselines ---------------------------------------------------------------------------------------------


@contextmanager
def django_database(database_url: str) -> Iterator[None]:
    """Points Django's default connection at a scratch database of this run (on the same server), as
    Django's test runner does for test databases: bench/worker_bench.py's functions use that connection,
    and its COPY ceiling truncates the tables it copies."""
    from django.db import connection

    name = database_name(database_url)
    if not name.startswith("appview_scratch_"):
        raise RuntimeError(f"refusing to point the baselines at {name!r}: not a scratch database of this run")
    previous = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = name
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["NAME"] = previous


def copy_baseline(database_url: str, events: int) -> Baseline:
    """The ceiling: the rows ``events`` events left in the database, written back with one binary COPY
    per table into the same (truncated) tables, indexes included."""
    with django_database(database_url):
        seconds, rows = copy_ceiling()
    return Baseline("copy", "raw COPY of the committed rows (ceiling)", events, seconds,
                    note=f"{rows:,} rows of the 1-worker phase's database")


def naive_baseline(ctx: Context, *, seed: int, events: int) -> Baseline:
    """The common approach on the first ``events`` events of the same recording, in an empty database."""
    from relaysim.simulation import SyntheticFirehose

    frames = list(SyntheticFirehose(seed=seed).frames(events))  # byte for byte the recording's first frames
    print(f"  naive indexer: {events:,} events, one transaction each", flush=True)
    with scratch_database(template=ctx.template) as database_url, django_database(database_url):
        seconds = naive_index(frames)
    return Baseline("naive", "naive: one event per transaction (ORM)", events, seconds,
                    note="the first events of the recording, into an empty database")


# -- the report --------------------------------------------------------------------------------------------


def fmt_mb(value: int) -> str:
    return f"{value / MB:,.0f} MB"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def target_rows(phases: list[Phase], baselines: list[Baseline]) -> list[list[str]]:
    rows = []
    for phase in phases:
        if not phase.name.startswith("throughput"):
            continue
        rows.append([f"sustained end-to-end, {phase.name.split(', ', 1)[1]}", f"{phase.rate:,.0f} events/s",
                     f">= {TARGET_RATE:,}", verdict(phase.rate >= TARGET_RATE)])
    for phase in phases:
        if not phase.name.startswith("latency"):
            continue
        p99 = phase.latency.get(0.99)
        rows.append([f"p99 latency, {phase.name.removeprefix('latency ')}", fmt_latency(p99),
                     f"< {TARGET_P99_MS:,} ms", verdict(None if p99 is None else p99 <= TARGET_P99_MS)])
    worst: dict[str, int] = {}
    for phase in phases:
        for name, rss in phase.peak_rss.items():
            kind = "run_worker" if re.fullmatch(r"w\d+", name) else name
            if kind in ("firehose", "run_worker"):
                worst[kind] = max(worst.get(kind, 0), rss)
    for kind, rss in sorted(worst.items()):
        label = "run_firehose" if kind == "firehose" else kind
        rows.append([f"peak RSS, {label} (any phase)", fmt_mb(rss), f"< {TARGET_RSS_MB} MB",
                     verdict(rss < TARGET_RSS_MB * MB)])
    one_worker = next((p for p in phases if p.workers == 1 and p.name.startswith("throughput")), None)
    for baseline in baselines:
        if one_worker is None or baseline.rate <= 0:
            continue
        ratio = one_worker.rate / baseline.rate
        if baseline.kind == "copy":
            rows.append(["1 worker end-to-end / COPY ceiling", f"{ratio:.2f} x", f">= {TARGET_COPY_SHARE} x",
                         verdict(ratio >= TARGET_COPY_SHARE)])
        else:
            rows.append(["1 worker end-to-end / naive indexer", f"{ratio:,.1f} x", f">= {TARGET_NAIVE_FACTOR} x",
                         verdict(ratio >= TARGET_NAIVE_FACTOR)])
    return rows


def findings(phases: list[Phase], cores: int) -> list[str]:
    """Facts the CPU table shows at a glance: saturation, the biggest users, disturbance by others."""
    notes = []
    for phase in phases:
        if not phase.cpu:
            continue
        capacity = cores * 100
        users = sorted(((value, name) for name, value in phase.cpu.items() if name not in ("machine", "other")),
                       reverse=True)
        top = ", ".join(f"{label(name)} {value:.0f}%" for value, name in users[:4])
        state = "saturated" if phase.cpu["machine"] >= 0.9 * capacity else "not saturated"
        notes.append(f"- {phase.name}: the machine was {state} ({phase.cpu['machine']:.0f}% of {capacity}%); "
                     f"biggest users {top}.")
        if phase.waits:
            ranked = sorted(phase.waits.items(), key=lambda item: -item[1])[:3]
            states = ", ".join(f"{state} {share:.0%}" for state, share in ranked)
            notes.append(f"  Its PostgreSQL backends were {states} of the time.")
        if phase.cpu["other"] >= 15:
            notes.append(f"  Processes outside this benchmark used {phase.cpu['other']:.0f}% of a core in this "
                         "window: the figures are lower than on an idle machine.")
        if phase.note:
            notes.append(f"  Note: {phase.note}.")
    return notes


def render(*, machine: dict[str, str], command: str, phases: list[Phase], baselines: list[Baseline],
           profile: Profile | None, output: Path, started: float) -> str:
    lines = [SECTION_TITLE, ""]
    lines += [
        f"Run {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))} with `{command}` "
        f"({(time.time() - started) / 60:.1f} min; logs and profile in `{output.relative_to(BASE_DIR)}/`).",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['ram']} RAM, {machine['os']}; "
        f"PostgreSQL {machine['postgresql']} (the machine's server, {machine['postgresql_settings']}; a fresh "
        "database per phase), Redis "
        f"{machine['redis']} (a throwaway redis-server per phase, no persistence), Python {machine['python']}; "
        f"load average at start {machine['load']}.",
        "",
        "Every process of the pipeline (run_relay_sim, run_firehose, run_worker, Redis, PostgreSQL) runs on "
        "this one machine and shares its cores. Throughput phases replay a recording of synthetic events "
        "(the relay simulator's realistic mix) as fast as the relay can send them, from cursor 0, as after "
        "downtime; latency phases generate events live at a fixed rate.",
        "",
        "### Against the targets of issue 7",
        "",
    ]
    lines += table(["measure", "result", "target", "met"], target_rows(phases, baselines))
    lines += ["", "### Phases", ""]
    rows = []
    for phase in phases:
        low, mid, high = phase.per_second
        lat = ([fmt_latency(phase.latency.get(f)) for f in (0.5, 0.95, 0.99)] if phase.name.startswith("latency")
               else ["", "", ""])
        first, last = phase.trend
        rows.append([phase.name, phase.offered, f"{phase.window:.0f} s", f"{phase.events:,}", f"{phase.rate:,.0f}",
                     f"{low:,.0f} / {mid:,.0f} / {high:,.0f}", f"{first:,.0f} / {last:,.0f}", f"{phase.peak_xlen:,}",
                     *lat])
    lines += table(["phase", "relay", "window", "events committed", "events/s", "1-s min / median / max",
                    f"first / last {TREND_SECONDS:g} s", "peak XLEN", "p50", "p95", "p99"], rows)
    lines += ["", "Latency: from the moment run_firehose read an event to the worker's acknowledgement after "
              "the commit, from the histogram `cluster:latency` (bucket upper bounds).", ""]
    names = sorted({name for phase in phases for name in phase.peak_rss}, key=process_order)
    lines += ["### Peak resident memory (sampled every 0.5 s, with children)", ""]
    lines += table(["process", *(phase.name for phase in phases)],
                   [[label(name), *(fmt_mb(phase.peak_rss[name]) if name in phase.peak_rss else "" for phase in phases)]
                    for name in names])
    lines += ["", "The largest PostgreSQL backend's RSS counts the shared buffers it touched. The relay simulator "
              "holds the whole replayed recording in memory by design; in the throughput phases Redis holds the "
              "stream up to the firehose's high-water mark.", ""]
    cpu_names = sorted({name for phase in phases for name in phase.cpu}, key=process_order)
    lines += [f"### CPU during each window (% of one core; the machine has {machine['cores']} cores)", ""]
    lines += table(["process", *(phase.name for phase in phases)],
                   [[label(name), *(f"{phase.cpu[name]:.0f}%" if name in phase.cpu else "" for phase in phases)]
                    for name in cpu_names])
    lines += ["", *cost_table(phases, int(machine["cores"]))]
    lines += ["", *waits_table(phases)]
    lines += ["", "### Baselines on the same events", ""]
    one_worker = next((p for p in phases if p.workers == 1 and p.name.startswith("throughput")), None)
    rows = []
    for baseline in baselines:
        ratio = (f"{one_worker.rate / baseline.rate:,.2f} x" if one_worker and baseline.rate > 0 else "")
        rows.append([baseline.name, f"{baseline.events:,}", f"{baseline.seconds:.2f} s",
                     f"{baseline.rate:,.0f}" if baseline.rate else "n/a", ratio, baseline.note])
    lines += table(["indexer", "events", "time", "events/s", "1 worker end-to-end / this", "note"], rows)
    lines += ["", "### Findings", "", *findings(phases, int(machine["cores"]))]
    if profile is not None:
        lines += ["", *render_profile(profile)]
    return "\n".join(lines) + "\n"


def cost_table(phases: list[Phase], cores: int) -> list[str]:
    """CPU time per committed event, per process: what bounds the rate once the cores are full."""
    measured = [phase for phase in phases if phase.cpu and phase.rate > 0]
    if not measured:
        return []
    names = sorted({name for phase in measured for name in phase.cpu} - {"other", "machine"}, key=process_order)

    def cost(phase: Phase, name: str) -> float:
        return phase.cpu.get(name, 0.0) / 100 / phase.rate * 1e6

    rows = [[label(name), *(f"{cost(phase, name):,.0f}" if name in phase.cpu else "" for phase in measured)]
            for name in names]
    totals = [sum(cost(phase, name) for name in names) for phase in measured]
    rows.append(["**pipeline total**", *(f"**{total:,.0f}**" for total in totals)])
    rows.append([f"rate the {cores} cores allow at that cost", *(f"{cores * 1e6 / total:,.0f}/s" for total in totals)])
    lines = ["### CPU per committed event (microseconds)", ""]
    lines += table(["process", *(phase.name for phase in measured)], rows)
    lines += ["", "The last row is the rate at which this pipeline would fill every core of the machine with nothing "
              "else running: a throughput phase below it waited on something other than CPU."]
    return lines


def waits_table(phases: list[Phase]) -> list[str]:
    """What the phase database's backends were doing (pg_stat_activity, sampled every 0.5 s)."""
    states = sorted({state for phase in phases for state in phase.waits},
                    key=lambda state: -max(phase.waits.get(state, 0.0) for phase in phases))
    if not states:
        return []
    lines = ["### What the PostgreSQL backends were doing (share of samples of pg_stat_activity)", ""]
    lines += table(["state", *(phase.name for phase in phases)],
                   [[state, *(f"{phase.waits[state]:.0%}" if state in phase.waits else "" for phase in phases)]
                    for state in states])
    return lines


PROCESS_ORDER = {"relay": 0, "firehose": 1, "worker": 2, "redis-server": 3, "postgres backend": 4,
                 "postgres (this database)": 5, "postgres (background)": 6, "other": 7, "machine": 8}


LABELS = {"relay": "run_relay_sim", "firehose": "run_firehose", "postgres backend": "postgres (largest backend)",
          "other": "other processes (not the pipeline)", "machine": "whole machine"}


def label(name: str) -> str:
    return f"run_worker {name}" if re.fullmatch(r"w\d+", name) else LABELS.get(name, name)


def process_order(name: str) -> tuple[int, str]:
    kind = "worker" if re.fullmatch(r"w\d+", name) else name
    return (PROCESS_ORDER.get(kind, 99), name)


def render_profile(profile: Profile) -> list[str]:
    lines = [f"### Profile of the slowest stage: {profile.stage}", ""]
    lines.append(f"Why this stage: {profile.why}. Right after the first throughput window, py-spy sampled it at "
                 f"100 Hz twice for {profile.seconds:g} s: CPU samples only (the process used "
                 f"{profile.cpu_percent:.0f}% of a core meanwhile), then the main thread's wall-clock time, waits "
                 f"included. Speedscope files: `{profile.path.relative_to(BASE_DIR)}`"
                 + (f", `{profile.wall_path.relative_to(BASE_DIR)}`." if profile.wall_path else "."))
    if profile.error:
        lines += ["", f"The CPU profile failed: {profile.error}"]
    else:
        lines += ["", "Where the CPU goes, by where the code lives (self time):", ""]
        lines += table(["module", "share of CPU samples"],
                       [[name, f"{share:.0%}"] for name, share in profile.by_module])
        lines += ["", "Functions with the most CPU self time:", ""]
        lines += table(["function", "share of CPU samples"],
                       [[f"`{name}`", f"{share:.0%}"] for name, share in profile.by_function])
        lines += ["", "The project's functions by inclusive CPU time (all threads; the loop's outer frames left out):",
                  ""]
        lines += table(["function", "share of CPU samples"],
                       [[f"`{name}`", f"{share:.0%}"] for name, share in profile.inclusive])
    if profile.wall_error:
        lines += ["", f"The wall-clock profile failed: {profile.wall_error}"]
    elif profile.wall_inclusive:
        lines += ["", "Where the main thread's wall-clock time goes (idle samples included: time inside a function "
                  "that sends SQL is mostly PostgreSQL executing it):", ""]
        lines += table(["function", "share of wall time"],
                       [[f"`{name}`", f"{share:.0%}"] for name, share in profile.wall_inclusive])
        lines += ["", "The main thread's innermost frames (what it was doing at each sample):", ""]
        lines += table(["function", "share of wall time"],
                       [[f"`{name}`", f"{share:.0%}"] for name, share in profile.wall_self[:8]])
    return lines


def write_section(report: str) -> None:
    """Replaces the End-to-end section of docs/benchmarks.md (up to the next "## " heading), keeping the
    sections other benchmarks write."""
    text = DOC_PATH.read_text() if DOC_PATH.exists() else "# Benchmarks\n\n"
    start = text.find(SECTION_TITLE + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + report
    else:
        following = text.find("\n## ", start + len(SECTION_TITLE))
        end = len(text) if following == -1 else following + 1
        text = text[:start] + report + ("\n" + text[end:] if following != -1 else "")
    DOC_PATH.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window of each phase")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds left out before each window")
    parser.add_argument("--rate", default="2000", help="latency phases: relay rates, comma-separated")
    parser.add_argument("--workers", default="1,2", help="throughput phases: worker counts, comma-separated")
    parser.add_argument("--events", type=int, default=None,
                        help="events in the replayed recording (default: enough for warm-up, window and profile "
                             f"at {SIZING_RATE:,} events/s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--naive-events", type=int, default=3000)
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    options = parser.parse_args()
    rates = [float(value) for value in options.rate.split(",") if value.strip()]
    worker_counts = [int(value) for value in options.workers.split(",") if value.strip()]
    events = options.events or int((options.warmup + options.seconds + options.profile_seconds + 10) * SIZING_RATE)

    os.environ["REDIS_KEY_PREFIX"] = f"e2e-{uuid.uuid4().hex[:6]}:"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    started = time.time()
    run_id = time.strftime("%Y%m%d-%H%M%S")
    output = OUTPUT_DIR / f"e2e-{run_id}"
    output.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python bench/e2e.py", *(shlex.quote(arg) for arg in sys.argv[1:])])
    print(f"logs and profiles in {output.relative_to(BASE_DIR)}", flush=True)
    with ExitStack() as stack:
        template_url = stack.enter_context(scratch_database())
        with throwaway_redis() as probe:
            machine = machine_description(template_url, probe.client())
        ctx = Context(options=options, template=database_name(template_url), output=output)
        recording = ensure_recording(events, options.seed)
        phases: list[Phase] = []
        profile: Profile | None = None
        baselines: list[Baseline] = []
        for index, workers in enumerate(worker_counts):
            phase, profiled, copy = throughput_phase(ctx, workers=workers, recording=recording, events=events,
                                                     profile=index == 0)
            phases.append(phase)
            profile = profile or profiled
            if copy is not None:
                baselines.append(copy)
        for rate in rates:
            phases.append(latency_phase(ctx, rate=rate))
        baselines.append(naive_baseline(ctx, seed=options.seed, events=options.naive_events))
    report = render(machine=machine, command=command, phases=phases, baselines=baselines, profile=profile,
                    output=output, started=started)
    print()
    print(report)
    (output / "report.md").write_text(report)
    if not options.no_doc:
        write_section(report)
        print(f"wrote the End-to-end section of {DOC_PATH.relative_to(BASE_DIR)}")


def ensure_recording(events: int, seed: int) -> Path:
    """The recording of ``events`` synthetic events of ``seed``, made once and kept in bench/output/."""
    from relaysim.simulation import SyntheticFirehose, write_recording

    path = OUTPUT_DIR / "cache" / f"synthetic-seed{seed}-{events}.frames"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"recording {events:,} synthetic events (seed {seed}) once, into {path.relative_to(BASE_DIR)} ...",
          flush=True)
    partial = path.with_suffix(".partial")
    write_recording(partial, (frame for _, frame in SyntheticFirehose(seed=seed).frames(events)))
    partial.rename(path)
    return path


if __name__ == "__main__":
    main()
