"""Benchmark of run_firehose: frames per second from a local run_relay_sim into Redis, and peak memory.

    .venv/bin/python bench/firehose_bench.py [--events 200000] [--seed 1]

Starts ``run_relay_sim`` (fast mode: --rate 0, all events encoded before it listens) and
``run_firehose`` as subprocesses on a free port, with a Redis key prefix of their own, then samples the
stream's length and the firehose's resident memory until every event is in the stream. Prints the rate
between the first and the last pushed event, the peak RSS, and the CPU each process used meanwhile (the
machine's cores are shared by the relay simulator, run_firehose and Redis). Removes its keys, logs and
processes at exit.
Not a test: nothing here asserts. ``--keep-logs`` keeps the two processes' logs.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import redis

BASE_DIR = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (ws://\S+?)/xrpc/")


def start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    return subprocess.Popen([sys.executable, str(BASE_DIR / "manage.py"), *args], env=env, cwd=BASE_DIR,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for_relay(log_path: Path, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise SystemExit(f"run_relay_sim exited:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.2)
    raise SystemExit("run_relay_sim did not start listening in time")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def redis_process(client: redis.Redis) -> psutil.Process | None:
    try:
        return psutil.Process(int(client.info("server")["process_id"]))
    except (psutil.Error, KeyError, ValueError):
        return None  # Redis on another machine or in a container: its CPU is not reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--keep-logs", action="store_true", help="keep the two processes' logs (path printed)")
    options = parser.parse_args()

    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "REDIS_KEY_PREFIX": prefix, "STREAM_HIGH_WATER": str(options.events + 100_000),
           "LOG_LEVEL": "INFO"}
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(BASE_DIR))
    # Django is set up only now, so that redis_store's key names here carry the benchmark's prefix.
    os.environ.update({"REDIS_KEY_PREFIX": prefix})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from pipeline import redis_store

    client = redis_store.connect()
    logs = Path(tempfile.mkdtemp(prefix="firehose-bench-"))
    relay = firehose = None
    try:
        print(f"encoding {options.events} events in run_relay_sim (seed {options.seed}) ...", flush=True)
        relay = start(["run_relay_sim", "--port", "0", "--rate", "0", "--events", str(options.events),
                       "--seed", str(options.seed)], env, logs / "relay.log")
        url = wait_for_relay(logs / "relay.log", relay, timeout=600)
        firehose = start(["run_firehose", "--relay", url, "--cursor", "0"], env, logs / "firehose.log")
        processes = {"run_relay_sim": psutil.Process(relay.pid), "run_firehose": psutil.Process(firehose.pid)}
        server = redis_process(client)
        if server is not None:
            processes["redis-server"] = server
        peak_rss = 0
        cpu_first: dict[str, float] = {}
        cpu_last: dict[str, float] = {}
        first: tuple[float, int] | None = None
        last: tuple[float, int] = (time.monotonic(), 0)
        deadline = time.monotonic() + options.timeout
        while time.monotonic() < deadline:
            if firehose.poll() is not None:
                raise SystemExit(f"run_firehose exited:\n{(logs / 'firehose.log').read_text(errors='replace')}")
            peak_rss = max(peak_rss, processes["run_firehose"].memory_info().rss)
            pushed = int(client.xlen(redis_store.events_stream()))
            now = time.monotonic()
            if pushed and first is None:
                first = (now, pushed)
                cpu_first = {name: cpu_seconds(process) for name, process in processes.items()}
            if pushed != last[1]:
                last = (now, pushed)
                cpu_last = {name: cpu_seconds(process) for name, process in processes.items()}
            if pushed >= options.events:
                break
            time.sleep(0.05)
        if first is None or last[0] <= first[0]:
            raise SystemExit("no events reached the stream")
        elapsed = last[0] - first[0]
        events = last[1] - first[1]
        rate = events / elapsed
        print(f"events in the stream: {last[1]} of {options.events}")
        print(f"run_firehose: {rate:,.0f} frames/s into Redis ({last[1] - first[1]} events in {elapsed:.2f} s)")
        print(f"run_firehose peak RSS: {peak_rss / 2**20:.0f} MB")
        print(f"machine load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        for name in processes:
            seconds = cpu_last[name] - cpu_first[name]
            print(f"CPU {name}: {seconds / elapsed * 100:.0f}% of one core, {seconds / events * 1e6:.1f} us per event")
    finally:
        for process in (firehose, relay):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (firehose, relay):
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        if options.keep_logs:
            print(f"logs: {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
