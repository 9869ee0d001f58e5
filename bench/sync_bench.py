"""Benchmark of commit verification (issue 15): one worker's events/s on the simulator's signed commits with
verification off and on, and the CPU that each check costs per commit.

    .venv/bin/python bench/sync_bench.py [--events 30000] [--actors 2000] [--seed 1] [--write docs/benchmarks.md]

1. Generates ``--events`` frames of ``relaysim.signed.SignedFirehose`` (the simulator's mix, every commit a
   real signed diff of an MST repository with ``since`` and ``prevData``) and serves their DID documents from a
   local PLC directory (``relaysim.pds.LocalNetwork``).
2. Runs ``manage.py run_worker --drain`` on the same frames twice, each on a fresh database (bench/worker_bench.py's
   harness): with ``VERIFY_COMMITS=0``, then with it on. Before the second run every DID is resolved once into
   the identity cache in PostgreSQL, as on a running indexer whose caches are warm; the cost of a cold
   resolution is reported apart.
3. In this process, over the same commits: the CPU of each check per commit: locating and hashing the blocks
   (CIDs), the ops and signed-commit checks, the signature, the MST inversion, and the key lookups of a batch
   (from memory, from PostgreSQL).

Prints a table and, with ``--write``, replaces the "Sync" section of that Markdown file. Not a test.
"""

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench import worker_bench  # noqa: E402
from bench.markdown import write_section  # noqa: E402

TARGETS = {"on_rate": 10_000}


def cpu_per_item(function: Any, items: list[Any]) -> float:
    """µs of this process's CPU per item for ``function`` over ``items`` (best of three passes)."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for item in items:
            function(item)
        best = min(best, time.process_time() - started)
    return best / len(items) * 1e6


def check_costs(frames: list[tuple[int, bytes]], keys: dict[str, Any]) -> dict[str, float]:
    """µs per commit of each check, on the commits among ``frames`` (keys: DID -> PublicKey)."""
    from protocol import repo
    from protocol.car import block_spans
    from protocol.frames import decode_frame

    commits = []
    for _, frame in frames:
        decoded = decode_frame(frame)
        # Commits of DIDs without a key (none, once deleted accounts' documents are served again) are left out.
        if (decoded.type == "#commit" and decoded.body.get("blocks") and decoded.body.get("prevData")
                and decoded.body["repo"] in keys):
            body = decoded.body
            commits.append((body, block_spans(body["blocks"])))
    signed = [(repo.verify_commit_event(body, spans, None, check_mst=False), keys[body["repo"]])
              for body, spans in commits]
    without_tree = cpu_per_item(lambda c: repo.verify_commit_event(c[0], c[1], None, check_mst=False), commits)
    with_tree = cpu_per_item(lambda c: repo.verify_commit_event(c[0], c[1], None), commits)
    return {
        "commits": len(commits),
        "locate blocks (CAR index)": cpu_per_item(lambda c: block_spans(c[0]["blocks"]), commits),
        "CIDs (hash every block)": cpu_per_item(lambda c: repo.check_block_cids(c[0]["blocks"], c[1]), commits),
        "CIDs, ops and signed commit": without_tree,
        "MST inversion (the same with it, less without: decode the path of each op, undo the ops, re-encode,"
        " compare with prevData)": with_tree - without_tree,
        "signature": cpu_per_item(lambda s: s[1].verify(s[0].unsigned_bytes(), s[0].sig), signed),
        "whole check (all of the above)": cpu_per_item(
            lambda c: repo.verify_commit_event(c[0], c[1], keys[c[0]["repo"]]), commits),
    }


def key_lookup_costs(dids: list[str]) -> dict[str, float]:
    """µs per DID of a batch's key lookup: ``identity.signing_keys`` answered from this process's memory, and
    the one PostgreSQL query (with the keys' parsing) that a worker makes for DIDs it has not seen."""
    from identity import cache, services

    batch = dids[:2000]
    services.signing_keys(batch, wait=60)
    started = time.process_time()
    services.signing_keys(batch, wait=60)
    memory = (time.process_time() - started) / len(batch) * 1e6
    started = time.process_time()
    cache.load(batch)
    stored = (time.process_time() - started) / len(batch) * 1e6
    return {"key lookup, from memory (per commit)": memory,
            "key lookup, from PostgreSQL (per DID new to a worker)": stored}


def run_worker_with(frames: list[tuple[int, bytes]], batch_size: int, environment: dict[str, str],
                    startup_cpu: float) -> dict[str, float]:
    """One ``run_worker --drain`` over ``frames`` with ``environment`` added: events/s, CPU per event of the
    worker (start-up left out) and of its PostgreSQL backend, peak RSS."""
    worker_bench.push_frames(frames)
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        _, rate, rss = worker_bench.run_worker(batch_size)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    events = len(frames)
    return {"rate": rate, "worker_us": (worker_bench.CPU["worker"] - startup_cpu) / events * 1e6,
            "postgres_us": worker_bench.CPU["postgres"] / events * 1e6, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--actors", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose Sync section to replace")
    args = parser.parse_args()
    worker_bench.setup_environment(f"bench-sync-{uuid.uuid4().hex[:8]}:")
    from relaysim.pds import LocalNetwork
    from relaysim.signed import SignedFirehose

    started = time.perf_counter()
    firehose = SignedFirehose(seed=args.seed, actors=args.actors)
    frames = list(firehose.frames(args.events))
    generated = time.perf_counter() - started
    print(f"{len(frames):,} signed frames generated in {generated:.1f} s", flush=True)
    with LocalNetwork(firehose.accounts) as network:
        # This process resolves through the same local servers (to warm the cache), with verification off.
        os.environ.update(network.indexer_environment())
        os.environ["VERIFY_COMMITS"] = "0"
        import django

        django.setup()
        from django.db import connection

        from identity import services
        from pipeline import redis_store

        client = redis_store.connect()
        cores = len(os.sched_getaffinity(0))
        load = os.getloadavg()[0]
        worker_bench.recreate_database()
        try:
            worker_bench.run_worker(args.batch_size)  # an empty stream: start-up and shut-down alone
            startup_cpu = worker_bench.CPU["worker"]
            off = run_worker_with(frames, args.batch_size, {"VERIFY_COMMITS": "0"}, startup_cpu)
            print(f"verification off: {off['rate']:,.0f} events/s", flush=True)
            worker_bench.remove_keys(client)
            worker_bench.recreate_database()
            accounts = firehose.accounts
            with accounts.lock:
                # Accounts deleted later in the stream: a live indexer checked their commits with the documents
                # they had then, so the warm cache holds those.
                accounts.documents.update(accounts.former_documents)
                accounts.tombstoned.difference_update(accounts.former_documents)
            dids = sorted(accounts.documents)
            resolving = time.perf_counter()
            keys = services.signing_keys(dids, wait=900)
            cold_ms = (time.perf_counter() - resolving) / max(len(dids), 1) * 1000
            # Fetched two days ago, as on an indexer that has run for a while: the worker's first handle copy
            # (one day back) leaves them alone, instead of renaming every actor during the measured run, which
            # the run without verification, whose cache starts empty, does not do.
            with connection.cursor() as cursor:
                cursor.execute("UPDATE identity_diddocument SET fetched_at = fetched_at - interval '2 days'")
            on = run_worker_with(frames, args.batch_size, {"VERIFY_COMMITS": "1"}, startup_cpu)
            refused = {name: int(value) for name, value in
                       ((k.decode(), v) for k, v in client.hgetall(redis_store.cluster_metrics()).items())
                       if name.startswith("errors:")}
            print(f"verification on: {on['rate']:,.0f} events/s", flush=True)
            costs = check_costs(frames, {did: key for did, key in keys.items() if key is not None})
            costs.update(key_lookup_costs(dids))
        finally:
            worker_bench.remove_keys(client)
            connection.close()
            worker_bench.admin_sql(f"DROP DATABASE IF EXISTS {worker_bench.BENCH_DB} WITH (FORCE)")
    commits = int(costs.pop("commits"))
    command = (f".venv/bin/python bench/sync_bench.py --events {args.events} --actors {args.actors}"
               f" --seed {args.seed} --batch-size {args.batch_size}")
    lines = [
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| one worker, verification off, events/s | {off['rate']:,.0f} (worker {off['worker_us']:.0f} µs,"
        f" PostgreSQL {off['postgres_us']:.0f} µs per event) | (rev ordering against the code before it:"
        " bench/worker_bench.py on both, see the text) | |",
        f"| one worker, verification on, events/s | {on['rate']:,.0f} (worker {on['worker_us']:.0f} µs,"
        f" PostgreSQL {on['postgres_us']:.0f} µs per event) | >= {TARGETS['on_rate']:,} |"
        f" {'yes' if on['rate'] >= TARGETS['on_rate'] else 'no'} |",
        f"| peak RSS, off / on | {off['rss']:.0f} / {on['rss']:.0f} MB | | |",
        f"| commits refused in the verified run | {sum(refused.values())} {refused or ''} | | |",
    ]
    lines += ["", "| check, CPU per commit (this process, best of 3 passes over "
              f"{commits:,} commits) | µs |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in costs.items()]
    lines.append(f"| DID resolution from the local PLC, cold (per DID, {len(dids):,} DIDs, wall clock) |"
                 f" {cold_ms * 1000:.0f} |")
    print("\n".join(lines))
    if args.write:
        section = (
            "## Sync\n\n"
            f"`{command}` on {cores} cores, {time.strftime('%Y-%m-%d')} (load average {load:.1f} before the runs);"
            f" {len(frames):,} frames of the signed simulator ({generated:.0f} s to generate), served DID"
            " documents by a local PLC; the worker, PostgreSQL and Redis share the machine.\n\n"
            + "\n".join(lines) + "\n\n" + ANALYSIS + "\n"
        )
        write_section(args.write, section)


ANALYSIS = """\
Reading the figures: the verified worker is bound by its own CPU (one core: its threads share one interpreter
lock), the unverified one less so. A commit's checks cost about the table's "whole check" in this process; the
signature is half of it, and libsecp256k1 (coincurve) alone takes about 25 µs of that, the floor of any Python
indexer. The MST inversion decodes every node on the path of each op (fanout 4: a repo of a few thousand
records is 6 levels deep) and re-encodes the changed ones, in Python. In the worker, verification adds more than
the checks' own cost: the keys of each batch are looked up, and the reader thread that checks the next batch and
the thread that indexes the current one contend for the interpreter lock. The target asks for 10,000 events/s
on these 2 cores: at the CPU per event measured here (the worker's and PostgreSQL's together) that needs nearly
all of both cores, while the worker alone is bound by one; what would reach it is less CPU per commit (the MST
inversion and node decoding in native code, the signature excepted) together with verification in processes of
its own, or more cores: verification is stateless per commit."""

if __name__ == "__main__":
    main()
