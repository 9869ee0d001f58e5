"""Throwaway PostgreSQL and Redis servers of a test's own, and scratch databases on any server.

Faults that stop a server (PostgreSQL down, Redis restarted empty) must never touch the machine's shared
servers: ``throwaway_postgres()`` and ``throwaway_redis()`` start private ones on free loopback ports, in
temporary directories removed on exit. ``scratch_database()`` gives a migrated database of its own on a
server (by default the shared one), dropped on exit.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

BASE_DIR = Path(__file__).resolve().parents[1]
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name), default=None)
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_migrate(database_url: str) -> None:
    """Runs ``manage.py migrate`` against ``database_url`` in a subprocess (its own settings)."""
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "migrate", "--noinput", "--skip-checks", "--verbosity", "0"],
        env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=180, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed against {database_url}:\n{result.stdout}{result.stderr}")


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


def shared_admin_url() -> str:
    """The maintenance database of the server DATABASE_URL (or the settings default) points to."""
    return with_database(os.environ.get("DATABASE_URL") or "postgres://localhost:5432/appview", "postgres")


def _conninfo(url: str) -> str:
    # libpq reads postgres:// URLs itself; an empty user means the OS user, as for the Django settings.
    return url.replace("postgres://", "postgresql://", 1)


def connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(_conninfo(database_url), autocommit=True, connect_timeout=5)


@contextmanager
def scratch_database(admin_url: str | None = None, *, template: str | None = None) -> Iterator[str]:
    """A new database on the server of ``admin_url`` (the shared server by default): a copy of the
    database named ``template`` (fast; it must have no open connection) or else freshly migrated.
    Yields its URL; drops it on exit, even when connections to it remain."""
    admin_url = admin_url or shared_admin_url()
    name = f"appview_scratch_{uuid.uuid4().hex[:10]}"
    with connect(admin_url) as conn:
        if template:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(admin_url, name)
        if not template:
            run_migrate(url)
        yield url
    finally:
        with connect(admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


class PostgresServer:
    """A private PostgreSQL cluster (trust authentication, superuser ``postgres``) on a free port."""

    def __init__(self, directory: Path) -> None:
        if PG_BIN is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.directory = directory
        self.data_dir = directory / "data"
        self.log_path = directory / "postgres.log"
        self.port = free_port()

    def _run(self, *args: str, timeout: float = 60) -> None:
        # initdb and postgres refuse to run as root.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}\n{log}")

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
                  "-w", "-t", str(int(START_TIMEOUT)), "start")

    def stop(self, *, mode: str = "fast") -> None:
        """Stops the server: ``fast`` disconnects clients and shuts down cleanly, ``immediate`` is a crash."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    @property
    def admin_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)

    def create_database(self, name: str, *, migrate: bool = True) -> str:
        """Creates (and by default migrates) a database; returns its URL."""
        with connect(self.admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = self.url(name)
        if migrate:
            run_migrate(url)
        return url


@contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """A started private PostgreSQL server; stopped and deleted on exit."""
    directory = Path(tempfile.mkdtemp(prefix="appview-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = PostgresServer(directory)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running:
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                server.stop(mode="immediate")
        shutil.rmtree(directory, ignore_errors=True)


class RedisServer:
    """A private redis-server on a free port that keeps nothing on disk unless told to."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, socket_connect_timeout=5)

    def start(self) -> None:
        """Starts the server; it loads ``dump.rdb`` when a ``stop(keep_data=True)`` left one."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.log_path), "--maxmemory-policy", "noeviction"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    log = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited: {log}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer in {START_TIMEOUT} s")
            time.sleep(0.05)

    def stop(self, *, keep_data: bool) -> None:
        """Stops the server. ``keep_data`` saves a snapshot first (an outage); otherwise the process is
        killed and every key is lost at the next start (a restart without persistence)."""
        if self.process is None:
            return
        if keep_data:
            with self.client() as client, suppress(redis.ConnectionError):
                client.shutdown(save=True)
        else:
            (self.directory / "dump.rdb").unlink(missing_ok=True)
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def restart_empty(self) -> None:
        """A crash and restart of a Redis that persists nothing: every key is gone."""
        self.stop(keep_data=False)
        self.start()

    def freeze(self) -> None:
        """Suspends the process (SIGSTOP): connections stay open but nothing answers, like a hung server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@contextmanager
def throwaway_redis() -> Iterator[RedisServer]:
    """A started private Redis server; killed and its directory deleted on exit."""
    directory = Path(tempfile.mkdtemp(prefix="appview-redis-"))
    server = RedisServer(directory)
    try:
        server.start()
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
            server.process.kill()
            server.process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
