"""The pipeline's real commands as subprocesses, with the faults a test injects into them.

``Pipeline`` holds one environment (database, Redis, key prefix, tunables) and starts ``run_relay_sim``,
``run_firehose`` and ``run_worker`` with it; every process writes its output to a log file of its own
under the output directory, and leaving the ``with`` block stops whatever still runs (SIGTERM, then
SIGKILL). Typical use::

    with Pipeline(database_url=..., redis_url=..., output_dir=...) as pipeline:
        pipeline.relay("--events", "3000", "--seed", "7", "--rate", "300")
        pipeline.firehose("--cursor", "0")
        workers = [pipeline.worker(f"w{i}") for i in (1, 2)]
        workers[0].kill()          # SIGKILL
        workers[0].start()         # same command again
        pipeline.wait_indexed(last_seq, timeout=120)
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
from django.conf import settings

from harness.servers import BASE_DIR, connect, free_port
from pipeline import cursor, redis_store

T = TypeVar("T")
STOP_TIMEOUT = 30.0


class PipelineError(AssertionError):
    """A wait timed out or a process stopped on its own; the message carries the logs' tails."""


def wait_until(condition: Callable[[], T], *, timeout: float, interval: float = 0.2,
               message: str | Callable[[], str] = "condition") -> T:
    """Calls ``condition`` until it returns something truthy (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise PipelineError(f"timed out after {timeout:.0f} s waiting for {text}")
        time.sleep(interval)


def log_tail(path: Path, chars: int = 3000) -> str:
    if not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


class Service:
    """One long-running manage.py command; it can be started again after it stopped or was killed."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.expected_exit = False  # stopped by the test, not on its own

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, args: list[str] | None = None) -> "Service":
        """Starts the command; ``args`` replace its arguments from now on (a restart without --cursor)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if args is not None:
            self.args = args
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== start {self.starts}: {' '.join(self.args)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, str(BASE_DIR / "manage.py"), *self.args],
                cwd=BASE_DIR, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.expected_exit = False
        return self

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a crash or an OOM kill."""
        self.expected_exit = True
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code of the clean stop, or
        None when it had to be killed."""
        self.expected_exit = True
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
            return None

    def died(self) -> bool:
        """True when the process exited without the test asking it to."""
        return not self.expected_exit and self.process is not None and self.process.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Pipeline:
    """The processes of one pipeline run against one database and one Redis (see module docstring)."""

    def __init__(self, *, database_url: str, redis_url: str, output_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            # The same prefix as this process, so that redis_store's key names here match theirs.
            "REDIS_KEY_PREFIX": settings.REDIS_KEY_PREFIX,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.services: list[Service] = []
        self.relay_port = free_port()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=10, socket_connect_timeout=5)

    @property
    def relay_url(self) -> str:
        return f"ws://127.0.0.1:{self.relay_port}"

    def service(self, name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        """A service not started yet: call ``.start()`` on it."""
        service = Service(name, list(args), {**self.env, **(env or {})}, self.output_dir / f"{name}.log")
        self.services.append(service)
        return service

    def relay(self, *args: str, timeout: float = 120, name: str = "relay", port: int | None = None) -> Service:
        """Starts run_relay_sim (on ``relay_port`` unless ``port`` says otherwise) and waits until it accepts
        connections (it encodes a bounded stream first)."""
        port = self.relay_port if port is None else port
        relay = self.service(name, "run_relay_sim", "--port", str(port), *args).start()

        def listening() -> bool:
            if relay.died():
                raise PipelineError(f"run_relay_sim exited:\n{log_tail(relay.log_path)}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, timeout=timeout, interval=0.1, message="run_relay_sim to listen")
        return relay

    def firehose(self, *args: str, name: str = "firehose", relay_url: str | None = None) -> Service:
        return self.service(name, "run_firehose", "--relay", relay_url or self.relay_url, *args).start()

    def worker(self, name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        return self.service(name, "run_worker", "--consumer", name, *args, env=env).start()

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs a one-shot manage.py command with the pipeline's environment."""
        return subprocess.run(
            [sys.executable, str(BASE_DIR / "manage.py"), *args], cwd=BASE_DIR, env=self.env,
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def index_stats(self) -> dict[str, Any]:
        result = self.manage("index_stats", "--json")
        if result.returncode != 0:
            raise PipelineError(f"index_stats --json failed:\n{result.stdout}{result.stderr}")
        return json.loads(result.stdout)

    def check_alive(self) -> None:
        """Raises when a process stopped without the test asking it to (bad input must never stop one)."""
        dead = [service for service in self.services if service.died()]
        if dead:
            raise PipelineError("\n".join(
                f"{service.name} exited with {service.process.returncode if service.process else None}:\n"
                f"{log_tail(service.log_path)}" for service in dead
            ))

    def durable_cursor(self, relay_url: str | None = None) -> int:
        """The low-water mark the workers committed to PostgreSQL for a relay (``relay_url``, by default
        the pipeline's), 0 before any."""
        host = cursor.relay_host(relay_url or self.relay_url)
        with connect(self.database_url) as conn:
            row = conn.execute(f"SELECT seq FROM {cursor.TABLE} WHERE name = %s", [host]).fetchone()
        return int(row[0]) if row else 0

    def stream_state(self) -> dict[str, int]:
        """Length, undelivered (lag) and pending entries of firehose:events for the consumer group."""
        with self.redis() as client:
            stream = redis_store.events_stream()
            try:
                info = client.xinfo_stream(stream)
                groups = client.xinfo_groups(stream)
            except redis.ResponseError:
                return {"length": 0, "undelivered": 0, "pending": 0}
            group = next((g for g in groups if g["name"].decode() == redis_store.CONSUMER_GROUP), None)
            last_id = info["last-generated-id"].decode()
            delivered = group["last-delivered-id"].decode() if group else "0-0"
            return {
                "length": int(info["length"]),
                "undelivered": int(last_id != delivered and info["length"] > 0),
                "pending": int(group["pending"]) if group else 0,
            }

    def wait_indexed(self, last_seq: int, *, timeout: float) -> None:
        """Waits until every event up to ``last_seq`` is committed (the durable cursor reached it) and the
        stream holds nothing undelivered or pending; checks meanwhile that no process died."""
        def done() -> bool:
            self.check_alive()
            state = self.stream_state()
            return self.durable_cursor() >= last_seq and not state["undelivered"] and not state["pending"]

        wait_until(done, timeout=timeout, interval=0.5, message=lambda: (
            f"the durable cursor to reach {last_seq} (it is {self.durable_cursor()}; stream "
            f"{self.stream_state()})\n" + "\n".join(
                f"--- {service.name}:\n{log_tail(service.log_path, 1500)}" for service in self.services)
        ))

    def stop(self) -> dict[str, int | None]:
        """Stops every running process (SIGTERM, SIGKILL after a timeout), workers and the firehose first
        so that they flush; returns each one's exit code."""
        codes: dict[str, int | None] = {}
        for service in reversed(self.services):
            if service.running:
                codes[service.name] = service.terminate()
        return codes
