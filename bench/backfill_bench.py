"""Benchmark of manage.py backfill against a raw COPY of the same rows, and its memory with a huge repository.

    .venv/bin/python bench/backfill_bench.py [--accounts 2000] [--records 100] [--big 1000000] [--seed 1]
                                             [--concurrency 4] [--processes 0,2] [--breakdown 300]
                                             [--write docs/benchmarks.md]

1. Generates ``--accounts`` repositories of ``--records`` records each and one of ``--big`` records
   (relaysim.bulk_repos: realistic records, signed commits, CAR files on disk) and serves them from a local PLC
   directory and PDS (relaysim.pds.LocalNetwork, threads of this process).
2. Many repositories: ``manage.py backfill --did-file`` (commits verified) as a subprocess on a fresh migrated
   database, once per ``--processes`` value (0: staged in the loader threads; N: in N staging processes).
   Records/s over the run (the backfill's own figure: from its start to its last batch) and from process start
   to exit; the CPU of the process with its staging processes, and of its PostgreSQL backends; the peak RSS
   of the process and the sum of its staging processes' peaks.
3. Raw COPY: the rows the first run stored are copied out, the tables truncated, and the rows written back with
   one binary COPY per table, indexes included (bench/worker_bench.py's ``copy_ceiling``): records/s.
4. The big repository alone (the last ``--processes`` value), on another fresh database: records/s and peak RSS.
5. Breakdown, in this process and one thread, on the first ``--breakdown`` repositories: CPU per record of
   the download (through the same HTTP client), the verification (block index and CIDs, commit, MST walk),
   decoding and extraction (``record_write``), staging (COPY rows), then the time of the COPY and of each
   statement of the merge, on a third fresh database.

Prints a report and, with ``--write``, replaces the "Backfill" section of that Markdown file. Not a test.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.markdown import write_section  # noqa: E402
from bench.worker_bench import PostgresProcesses, copy_ceiling, cpu_seconds  # noqa: E402
from harness.servers import database_name, scratch_database  # noqa: E402

TARGETS = {"rate": 30_000, "copy_ratio": 0.5, "rss_mb": 400}
SECTION_TITLE = "## Backfill"
FINISHED = re.compile(r"backfill \w+ finished: (\d+) repositories stored, (\d+) failures, (\d+) records in ([\d.]+) s")


@dataclass
class Run:
    processes: int
    repos: int
    records: int
    failures: int
    run_seconds: float  # the backfill's own figure
    process_seconds: float  # from process start to exit
    process_cpu: float
    postgres_cpu: float
    peak_rss_mb: float
    staging_rss_mb: float  # the sum of the staging processes' peaks
    staging_cpu: float  # of process_cpu

    @property
    def rate(self) -> float:
        return self.records / self.run_seconds


def setup_environment(prefix: str, database_url: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["REDIS_KEY_PREFIX"] = prefix
    os.environ["DATABASE_URL"] = database_url


def run_backfill(database_url: str, did_file: Path, environment: dict[str, str], concurrency: int, processes: int,
                 log_path: Path) -> Run:
    """``manage.py backfill`` on ``database_url``; its figures, CPU and peak RSS."""
    env = {**os.environ, **environment, "DATABASE_URL": database_url}
    postgres = PostgresProcesses(database_name(database_url))
    backend_cpu: dict[int, float] = {}
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, str(BASE_DIR / "manage.py"), "backfill", "--did-file",
                                    str(did_file), "--concurrency", str(concurrency), "--processes", str(processes)],
                                   cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(process.pid)
        process_cpu = 0.0
        staging_cpu: dict[int, float] = {}
        staging_peak_kb: dict[int, int] = {}
        peak_kb = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal process_cpu, peak_kb
            while not done.is_set():
                postgres.scan()
                for pid, backend in list(postgres.backends.items()):
                    with suppress(psutil.Error):
                        backend_cpu[pid] = cpu_seconds(backend)
                with suppress(psutil.Error):
                    process_cpu = cpu_seconds(watched)
                    for child in watched.children(recursive=True):
                        with suppress(psutil.Error):
                            if "spawn_main" not in " ".join(child.cmdline()):
                                continue  # multiprocessing's resource tracker
                            staging_cpu[child.pid] = cpu_seconds(child)
                            staging_peak_kb[child.pid] = max(staging_peak_kb.get(child.pid, 0),
                                                             _peak_rss_kb(child.pid))
                peak_kb = max(peak_kb, _peak_rss_kb(process.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        done.set()
        sampler.join()
    elapsed = time.perf_counter() - started
    output = log_path.read_text()
    finished = FINISHED.search(output)
    if os.waitstatus_to_exitcode(status) != 0 or finished is None:
        raise SystemExit(f"backfill failed:\n{output[-3000:]}")
    repos, failures, records, seconds = finished.groups()
    # wait4 counts the staging processes the backfill waited for; the samples may miss their last 0.1 s.
    return Run(processes=processes, repos=int(repos), records=int(records), failures=int(failures),
               run_seconds=float(seconds), process_seconds=elapsed,
               process_cpu=max(process_cpu + sum(staging_cpu.values()), usage.ru_utime + usage.ru_stime),
               postgres_cpu=sum(backend_cpu.values()), peak_rss_mb=peak_kb / 1024,
               staging_rss_mb=sum(staging_peak_kb.values()) / 1024, staging_cpu=sum(staging_cpu.values()))


def _peak_rss_kb(pid: int) -> int:
    """The peak resident memory of the process since it started its program (VmHWM; wait4's ru_maxrss would
    count the pages this process had when it forked, before the exec)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) if found else 0


def point_django_at(database_url: str) -> None:
    """Django's default connection on this scratch database (the COPY ceiling and the breakdown use it)."""
    from django.db import connection

    connection.close()
    connection.settings_dict["NAME"] = database_name(database_url)


def breakdown(network: Any, dids: list[str], database_url: str, environment: dict[str, str]) -> dict[str, float]:
    """Microseconds per record of each step, in this process and one thread; PostgreSQL steps in wall time."""
    import libipld
    import psycopg
    from django.conf import settings
    from django.db import connection

    from appview.indexing.events import record_write
    from appview.sync import backfill_store
    from appview.sync.backfill_car import open_repository
    from appview.sync.backfill_stage import stage_repository
    from appview.sync.backfill_store import RepoStager
    from identity.outbound import Outbound
    from protocol.commit import RecordOp
    from protocol.dagcbor import decode_record

    overrides = dict(item.split("=", 1) for item in environment["IDENTITY_HOST_OVERRIDES"].split(","))
    client = Outbound(timeout=30, concurrency=1, host_overrides={
        host: (address.rsplit(":", 1)[0], int(address.rsplit(":", 1)[1])) for host, address in overrides.items()})
    point_django_at(database_url)
    records = sum(sum(network.repos[did].counts.values()) for did in dids)
    per_record: dict[str, float] = {}

    def timed(name: str, step: Any) -> Any:
        started = time.process_time()
        result = step()
        per_record[name] = (time.process_time() - started) / records * 1e6
        return result

    def download() -> list[bytes]:
        cars = []
        for did in dids:
            with tempfile.TemporaryFile() as spool:
                client.download(f"https://pds.sim.test/xrpc/com.atproto.sync.getRepo?did={did}", spool,
                                max_bytes=settings.RESYNC_MAX_BYTES, accept="application/vnd.ipld.car")
                spool.seek(0)
                cars.append(spool.read())
        return cars

    cars = timed("download (HTTP from the local PDS, to a temporary file)", download)
    repositories = timed("verify: block index and every block's CID, commit and signature",
                         lambda: [open_repository(car, did, network.keys[did].public_key)
                                  for did, car in zip(dids, cars, strict=True)])
    paths = timed("verify: MST walk", lambda: [list(repository.records()) for repository in repositories])
    blocks = timed("read record blocks", lambda: [[repository.index.block(cid) or b"" for _, cid in listed]
                                                  for repository, listed in zip(repositories, paths, strict=True)])
    values = timed("decode records (DAG-CBOR)", lambda: [[decode_record(block) for block in listed]
                                                         for listed in blocks])
    texts = timed("CIDs as text", lambda: [[libipld.encode_cid(cid) for _, cid in listed] for listed in paths])

    def extract() -> list[list[Any]]:
        return [[record_write(repository.did, RecordOp("create", path.partition("/")[0], path.partition("/")[2],
                                                       text, record), rev=repository.rev, seq=0, order=0)[0]
                 for (path, _), text, record in zip(listed, cid_texts, records, strict=True)]
                for repository, listed, cid_texts, records in zip(repositories, paths, texts, values, strict=True)]

    writes = timed("typed columns and record checks (record_write)", extract)

    def rows() -> None:
        for repository, listed in zip(repositories, writes, strict=True):
            stager = RepoStager(repository.did, repository.rev)
            for write in listed:
                if write is not None:
                    stager.add(write)
            stager.finish().close()

    timed("COPY rows, actor DIDs and deltas (RepoStager)", rows)
    staged = timed("the loaders' whole step after the download (all the above, as they run it)",
                   lambda: [stage_repository(open_repository(car, did, network.keys[did].public_key),
                                             hand_over=lambda part: None, should_stop=lambda: False,
                                             check_tree_first=True)
                            for did, car in zip(dids, cars, strict=True)])
    with connection.cursor() as cur:
        cur.execute("INSERT INTO appview_backfillrepo (did, state, claimed_by) SELECT unnest(%s::text[]),"
                    " 'in_progress', 'breakdown'", [dids])
    statement_seconds: dict[str, float] = defaultdict(float)
    execute, copy = psycopg.Cursor.execute, psycopg.Cursor.copy

    def timed_execute(self: Any, query: Any, params: Any = None, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(self, query, params, **options)
        finally:
            statement_seconds[_statement_kind(str(query))] += time.perf_counter() - started

    class TimedCopy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __enter__(self) -> Any:
            self.started = time.perf_counter()
            return self.inner.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            result = self.inner.__exit__(*exc)
            statement_seconds["COPY into staging or tables"] += time.perf_counter() - self.started
            return result

    psycopg.Cursor.execute = timed_execute  # type: ignore[method-assign]
    psycopg.Cursor.copy = lambda self, *args, **kwargs: TimedCopy(copy(self, *args, **kwargs))  # type: ignore
    try:
        started = time.perf_counter()
        batch: list[Any] = []
        for repo in staged:
            batch.append(repo)
            if sum(item.records for item in batch) >= settings.BACKFILL_BATCH_RECORDS:
                backfill_store.store_batch(batch, run="breakdown")
                batch = []
        if batch:
            backfill_store.store_batch(batch, run="breakdown")
        total = time.perf_counter() - started
    finally:
        psycopg.Cursor.execute, psycopg.Cursor.copy = execute, copy  # type: ignore[method-assign]
    for name, seconds in sorted(statement_seconds.items(), key=lambda item: -item[1]):
        per_record[f"PostgreSQL (wall): {name}"] = seconds / records * 1e6
    per_record["PostgreSQL (wall): whole store step"] = total / records * 1e6
    client.close()
    return per_record


def _statement_kind(sql: str) -> str:
    kinds = [("WITH w AS (INSERT INTO appview_post (", "insert new repositories' posts with their counts"),
             ("INSERT INTO backfill_batch_deltas", "deltas of new repositories' rows"),
             ("UPDATE appview_post t SET like_count = t.", "add deltas to existing posts' counts"),
             ("UPDATE appview_post t SET like_count = c.", "count merged new posts from the rows"),
             ("UPDATE appview_actor t SET followers_count", "add deltas to actors' counts"),
             ("WITH w AS (INSERT INTO", "merge: upserts"), ("WITH w AS (DELETE", "merge: deletes of rows gone"),
             ("WITH ins AS (INSERT INTO appview_actor", "actor rows"), ("SELECT did, floor_rev", "actor row locks"),
             ("UPDATE appview_actor SET floor_rev", "finish_resync"), ("DELETE FROM appview_recordtombstone",
                                                                       "finish_resync"),
             ("INSERT INTO appview_hiddenshare", "hidden shares")]
    return next((name for prefix, name in kinds if sql.startswith(prefix)), "other statements")


def variant_name(processes: int) -> str:
    if not processes:
        return "staged in the loader threads"
    return f"{processes} staging process{'es' if processes > 1 else ''}"


def report(args: argparse.Namespace, runs: list[Run], copy_seconds: float, copy_rows: int, big: Run | None,
           parts: dict[str, float], load: tuple[float, float]) -> str:
    copy_rate = runs[0].records / copy_seconds

    def met(value: str, ok: bool) -> str:
        return f"{value} ({'met' if ok else 'missed'})"

    rows: list[tuple[str, list[str], str]] = [
        ("backfill records/s (many repositories, run time)",
         [met(f"{run.rate:,.0f}", run.rate >= TARGETS["rate"]) for run in runs], f">= {TARGETS['rate']:,}"),
        ("same, process start to exit (Django start-up included)",
         [f"{run.records / run.process_seconds:,.0f}" for run in runs], ""),
        ("raw COPY of the same rows, records/s", [f"{copy_rate:,.0f}" for _ in runs], ""),
        ("backfill / raw COPY", [met(f"{run.rate / copy_rate:.2f}", run.rate / copy_rate >= TARGETS["copy_ratio"])
                                 for run in runs], f">= {TARGETS['copy_ratio']}"),
        ("backfill CPU per record (with its staging processes)",
         [f"{run.process_cpu / run.records * 1e6:.0f} µs" for run in runs], ""),
        ("of which its staging processes'", [f"{run.staging_cpu / run.records * 1e6:.0f} µs" for run in runs], ""),
        ("its PostgreSQL backends' CPU per record", [f"{run.postgres_cpu / run.records * 1e6:.0f} µs" for run in runs],
         ""),
        ("cores busy (both, over the run time)",
         [f"{(run.process_cpu + run.postgres_cpu) / run.run_seconds:.2f}" for run in runs], ""),
        ("peak RSS: the backfill process + its staging processes",
         [f"{run.peak_rss_mb:.0f} + {run.staging_rss_mb:.0f} MB" for run in runs], ""),
    ]
    lines = [
        SECTION_TITLE, "",
        f"`.venv/bin/python bench/backfill_bench.py --accounts {args.accounts} --records {args.records} --big "
        f"{args.big} --seed {args.seed} --concurrency {args.concurrency} --processes "
        f"{','.join(str(run.processes) for run in runs)} --breakdown {args.breakdown}` on "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; the local PDS and PLC (this script), the backfill "
        f"and PostgreSQL share the machine (load average {load[0]:.1f} before, {load[1]:.1f} after). Commits "
        f"verified (signatures, CIDs, MST); {runs[0].repos:,} repositories, {runs[0].records:,} records, "
        f"{', '.join(str(run.failures) for run in runs)} failures; raw COPY: {copy_rows:,} rows (records and "
        "actor rows).",
        "", f"| measure | {' | '.join(variant_name(run.processes) for run in runs)} | target |",
        f"|---|{'---|' * len(runs)}---|",
    ]
    lines += [f"| {name} | {' | '.join(values)} | {target} |" for name, values, target in rows]
    if big is not None:
        lines += ["", f"One repository of {big.records:,} records ({variant_name(big.processes)}; a repository "
                  "this large is read in place by its loader thread): "
                  f"{big.rate:,.0f} records/s, peak RSS {big.peak_rss_mb:.0f} MB + {big.staging_rss_mb:.0f} MB "
                  f"(target < {TARGETS['rss_mb']} MB: "
                  f"{'met' if big.peak_rss_mb + big.staging_rss_mb < TARGETS['rss_mb'] else 'missed'})."]
    if parts:
        lines += ["", f"Breakdown (µs per record, first {args.breakdown} repositories, one thread; Python steps in "
                  "CPU time, PostgreSQL steps in wall time of the statements):", "", "| step | µs/record |",
                  "|---|---|"]
        lines += [f"| {name} | {value:.1f} |" for name, value in parts.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--big", type=int, default=1_000_000, help="records of the one big repository (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--processes", type=lambda text: [int(value) for value in text.split(",")], default=[0, 2],
                        help="staging processes of each run of the many repositories, comma-separated (0: none)")
    parser.add_argument("--breakdown", type=int, default=300, help="repositories of the single-thread breakdown")
    parser.add_argument("--write", type=Path, help="the Markdown file whose Backfill section to replace")
    args = parser.parse_args()

    prefix = f"backfill-bench-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as directory, \
            scratch_database() as big_url, scratch_database() as parts_url:
        setup_environment(prefix, big_url)
        import django

        django.setup()
        from django.db import connection

        from relaysim.bulk_repos import generate_network
        from relaysim.pds import LocalNetwork

        started = time.perf_counter()
        network = generate_network(Path(directory), accounts=args.accounts + (1 if args.big else 0),
                                   records=lambda index: args.big if index == args.accounts else args.records,
                                   seed=args.seed)
        dids = list(network.repos)
        print(f"generated {len(dids)} repositories, {network.records:,} records in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        with LocalNetwork(network.accounts) as servers:
            environment = {**servers.indexer_environment(), "VERIFY_COMMITS": "1", "LOG_LEVEL": "INFO",
                           "REDIS_KEY_PREFIX": prefix}
            many_file = Path(directory) / "many.txt"
            many_file.write_text("\n".join(dids[:args.accounts]))
            load_before = os.getloadavg()[0]
            runs = []
            for index, processes in enumerate(args.processes):
                with scratch_database() as many_url:
                    runs.append(run_backfill(many_url, many_file, environment, args.concurrency, processes,
                                             Path(directory) / f"many-{processes}.log"))
                    print(f"many: {runs[-1]}", flush=True)
                    if index == 0:
                        point_django_at(many_url)
                        copy_seconds, copy_rows = copy_ceiling()
                        print(f"raw COPY: {copy_rows:,} rows in {copy_seconds:.2f} s", flush=True)
                        connection.close()
            big = None
            if args.big:
                big_file = Path(directory) / "big.txt"
                big_file.write_text(dids[-1])
                big = run_backfill(big_url, big_file, environment, args.concurrency, args.processes[-1],
                                   Path(directory) / "big.log")
                print(f"big: {big}", flush=True)
            parts = breakdown(network, dids[:args.breakdown], parts_url, environment) if args.breakdown else {}
            load_after = os.getloadavg()[0]
        connection.close()
        section = report(args, runs, copy_seconds, copy_rows, big, parts, (load_before, load_after))
        print(section)
        if args.write:
            write_section(args.write, section)


if __name__ == "__main__":
    main()
