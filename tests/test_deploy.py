"""Deployment: `manage.py check --deploy` with the settings docker-compose.yml gives the app, the compose file and
its Caddy proxy (body limit, daphne reachable only through it), and ./dev-services, which starts or installs
PostgreSQL and Redis for ./dev and .ci/run.

Docker does not run here: the compose file is read as YAML with Compose's variable substitution, and the
Caddyfile is run by Debian's caddy when it is installed."""

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import redis
import websockets
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness.processes import log_tail, wait_until
from harness.servers import BASE_DIR, free_port

COMPOSE = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
CADDYFILE = BASE_DIR / "deploy" / "Caddyfile"
DEV_SERVICES = BASE_DIR / "dev-services"
DAPHNE = Path(sys.executable).parent / "daphne"
# The .env of a public deployment, as the README's Docker section writes it.
PUBLIC_SITE = {
    "SECRET_KEY": secrets.token_urlsafe(50),
    "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
    "SITE_ADDRESS": "appview.example.org",
    "ALLOWED_HOSTS": "appview.example.org",
    "HTTPS": "on",
}
SUBSTITUTION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def substitute(value: str, dotenv: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error} and ${NAME?error}."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        value = dotenv.get(name)
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("?") and missing:
            raise AssertionError(f"docker compose would stop: {name} {arg}")
        if op.endswith("-") and missing:
            return arg
        return value or ""

    return SUBSTITUTION.sub(replace, value)


def service(name: str) -> dict[str, Any]:
    return COMPOSE["services"][name]


def service_environment(name: str, dotenv: dict[str, str]) -> dict[str, str]:
    return {key: substitute(str(value), dotenv) for key, value in service(name)["environment"].items()}


def run_check_deploy(dotenv: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`manage.py check --deploy` with only the environment the compose file gives the web container."""
    environment = {"PATH": os.environ["PATH"], **service_environment("web", dotenv)}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR, env=environment, capture_output=True, text=True, timeout=60,
    )


def test_it_passes_check_deploy_with_the_settings_docker_compose_gives_a_public_site() -> None:
    result = run_check_deploy(PUBLIC_SITE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_it_warns_in_check_deploy_when_the_site_is_served_without_https() -> None:
    result = run_check_deploy({**PUBLIC_SITE, "HTTPS": ""})
    assert result.returncode == 1
    assert "security.W012" in result.stderr and "security.W016" in result.stderr  # cookies over plain HTTP


def test_it_publishes_the_proxy_and_nothing_else() -> None:
    published = sorted(name for name, definition in COMPOSE["services"].items() if definition.get("ports"))
    assert published == ["proxy"]
    proxy = service("proxy")
    assert re.fullmatch(r"caddy:2\.\d+\.\d+(-alpine)?", proxy["image"]), proxy["image"]
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    assert substitute(proxy["environment"]["SITE_ADDRESS"], {}) == ":80"
    assert substitute(proxy["environment"]["SITE_ADDRESS"], PUBLIC_SITE) == "appview.example.org"
    assert {"80:80", "443:443"} <= set(proxy["ports"])


def test_it_has_daphne_trust_forwarded_headers_only_behind_the_proxy() -> None:
    web = service("web")
    assert "--proxy-headers" in web["command"]
    assert service_environment("web", PUBLIC_SITE)["TRUST_PROXY_HEADERS"] == "true"
    # The image alone (docker run, or daphne published directly) trusts none.
    image_command = [line for line in (BASE_DIR / "Dockerfile").read_text().splitlines() if line.startswith("CMD")]
    assert image_command and "daphne" in image_command[0] and "--proxy-headers" not in image_command[0]
    assert "--proxy-headers" not in (BASE_DIR / "Procfile").read_text()


def test_it_keeps_requiring_a_secret_key_in_docker_compose() -> None:
    with pytest.raises(AssertionError, match="SECRET_KEY"):
        service_environment("web", {key: value for key, value in PUBLIC_SITE.items() if key != "SECRET_KEY"})


def caddy_site_block() -> str:
    text = CADDYFILE.read_text()
    match = re.search(r"^\{\$SITE_ADDRESS::80\} \{$(?P<body>.*?)^\}$", text, re.MULTILINE | re.DOTALL)
    assert match, "no site block for {$SITE_ADDRESS::80} in deploy/Caddyfile"
    return match["body"]


def test_it_limits_request_bodies_and_proxies_to_daphne_in_the_caddyfile() -> None:
    site = caddy_site_block()
    limit = re.search(r"request_body \{\s*max_size (\d+)MB\s*\}", site)
    assert limit and int(limit[1]) <= 1
    upstream = re.search(r"reverse_proxy \{\$WEB_UPSTREAM:(\S+)\}", site)
    assert upstream and upstream[1] == "web:5002"  # the web service's daphne
    assert "--port" in service("web")["command"] and "5002" in service("web")["command"]


# -- the Caddyfile run by a real Caddy in front of a real daphne --------------------------------------------


@pytest.fixture
def proxied_daphne(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """daphne as docker-compose runs it (--proxy-headers, TRUST_PROXY_HEADERS) behind Caddy with
    deploy/Caddyfile; yields Caddy's port and daphne's log."""
    daphne_port, caddy_port = free_port(), free_port()
    daphne_log, caddy_log = tmp_path / "daphne.log", tmp_path / "caddy.log"
    environment = {**os.environ, "TRUST_PROXY_HEADERS": "true", "XDG_DATA_HOME": str(tmp_path),
                   "XDG_CONFIG_HOME": str(tmp_path), "SITE_ADDRESS": f":{caddy_port}",
                   "WEB_UPSTREAM": f"127.0.0.1:{daphne_port}", "CADDY_ADMIN": f"localhost:{free_port()}"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with daphne_log.open("wb") as log:
            processes.append(subprocess.Popen(
                [str(DAPHNE), "-b", "127.0.0.1", "-p", str(daphne_port), "--proxy-headers", "config.asgi:application"],
                cwd=BASE_DIR, env=environment, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        with caddy_log.open("wb") as log:
            processes.append(subprocess.Popen(
                ["caddy", "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                cwd=tmp_path, env=environment, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))

        def healthy() -> bool:
            for process, log_path in zip(processes, (daphne_log, caddy_log), strict=True):
                if process.poll() is not None:
                    raise AssertionError(f"{process.args[0]} exited:\n{log_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"http://localhost:{caddy_port}/healthz", timeout=2) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_until(healthy, timeout=30, message=lambda: f"Caddy and daphne:\n{log_tail(caddy_log)}")
        yield caddy_port, daphne_log
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)


@pytest.mark.skipif(shutil.which("caddy") is None, reason="needs Debian's caddy (apt-get install caddy)")
def test_it_serves_through_caddy_with_the_body_limit_websockets_and_the_real_client_address(
    proxied_daphne: tuple[int, Path],
) -> None:
    port, daphne_log = proxied_daphne
    small = urllib.request.Request(f"http://localhost:{port}/no-such-page", data=b"x" * 1000, method="POST",
                                   headers={"X-Forwarded-For": "203.0.113.9"})
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(small, timeout=10)
    assert answered.value.code == 404  # reached Django
    big = urllib.request.Request(f"http://localhost:{port}/no-such-page", data=b"x" * 2_000_000, method="POST")
    with pytest.raises((urllib.error.HTTPError, ConnectionError)) as refused:
        urllib.request.urlopen(big, timeout=10)
    if isinstance(refused.value, urllib.error.HTTPError):
        assert refused.value.code in {413, 502}  # 413 from Caddy 2.7 on; Debian's 2.6 reports the cut as 502

    async def snapshot() -> str:
        async with websockets.connect(f"ws://localhost:{port}/ws/metrics/", origin=f"http://localhost:{port}") as ws:
            return str(await ws.recv())

    assert '"eventsProcessed"' in asyncio.run(snapshot())
    wait_until(lambda: "WSDISCONNECT /ws/metrics/" in daphne_log.read_text(), timeout=10)
    access = daphne_log.read_text()
    # The client's forged X-Forwarded-For was replaced by Caddy with the address it really came from.
    assert '"POST /no-such-page" 404' in access
    assert "203.0.113.9" not in access
    assert access.count('"POST /no-such-page"') == 1  # the 2 MB body never reached Django


# -- ./dev-services ------------------------------------------------------------------------------------------


@pytest.fixture
def bare_path() -> Iterator[Path]:
    """A PATH directory with the few tools dev-services needs and none of PostgreSQL's or Redis's, readable by
    any user (pytest's tmp_path is not)."""
    directory = Path(tempfile.mkdtemp(prefix="dev-services-"))
    directory.chmod(0o755)
    for tool in ("python3", "id", "sleep", "awk", "apt-get"):
        found = shutil.which(tool, path="/usr/bin:/bin")
        assert found, f"{tool} not found"
        (directory / tool).symlink_to(found)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def run_dev_services(path: str, *, as_user: str | None = None, **urls: str) -> subprocess.CompletedProcess[str]:
    # A copy in a directory any user can read (the checkout may be in a private home directory).
    with tempfile.TemporaryDirectory(prefix="dev-services-") as directory:
        Path(directory).chmod(0o755)
        script = shutil.copy(DEV_SERVICES, directory)
        return subprocess.run(
            ["/bin/bash", script], cwd=directory, env={"PATH": path, **urls}, user=as_user,
            capture_output=True, text=True, timeout=90,
        )


def nothing_listens() -> dict[str, str]:
    return {"DATABASE_URL": f"postgres://localhost:{free_port()}/appview",
            "REDIS_URL": f"redis://localhost:{free_port()}/0"}


def test_it_prints_the_install_command_when_postgresql_and_redis_are_missing(bare_path: Path) -> None:
    # Run as an ordinary user, the script must print the command rather than install.
    result = run_dev_services(str(bare_path), as_user="nobody" if os.geteuid() == 0 else None, **nothing_listens())
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "postgresql redis-server not installed; install with: "
        "sudo apt-get update && sudo apt-get install -y postgresql redis-server"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the install branch runs as root")
def test_it_installs_the_missing_debian_packages_as_root(bare_path: Path) -> None:
    # apt-get here only writes down how it was called: nothing is installed.
    calls = bare_path / "apt-get.calls"
    (bare_path / "apt-get").unlink()
    (bare_path / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bare_path / "apt-get").chmod(0o755)
    result = run_dev_services(str(bare_path), **nothing_listens())
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq postgresql redis-server"]
    assert "installing postgresql redis-server" in result.stdout
    # The stub installed nothing, so the script stops there instead of starting servers that do not exist.
    assert result.returncode == 1
    assert "PostgreSQL is not installed" in result.stderr


def test_it_starts_an_installed_redis_when_nothing_answers() -> None:
    port = free_port()
    environment = {"DATABASE_URL": os.environ.get("DATABASE_URL") or "postgres://localhost:5432/appview",
                   "REDIS_URL": f"redis://localhost:{port}/0"}
    try:
        result = run_dev_services(os.environ["PATH"], **environment)
        assert result.returncode == 0, result.stderr
        assert f"starting Redis on port {port}" in result.stdout
        assert redis.Redis(port=port).ping()
    finally:
        with suppress(redis.ConnectionError):  # none started
            redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)


def test_it_leaves_running_and_remote_servers_alone(bare_path: Path) -> None:
    # The machine's own servers answer; a URL naming another host is for ensure_services to judge.
    running = {"DATABASE_URL": os.environ.get("DATABASE_URL") or "postgres://localhost:5432/appview",
               "REDIS_URL": os.environ.get("REDIS_URL") or "redis://localhost:6379/0"}
    result = run_dev_services(str(bare_path), **running)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    remote = {"DATABASE_URL": "postgres://db.example.invalid:5432/appview",
              "REDIS_URL": "redis://cache.example.invalid:6379/0"}
    result = run_dev_services(str(bare_path), **remote)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_it_gives_dev_services_the_defaults_of_the_settings() -> None:
    script = DEV_SERVICES.read_text()
    settings_source = (BASE_DIR / "config" / "settings.py").read_text()
    for name, default in (("DATABASE_URL", "postgres://localhost:5432/appview"),
                          ("REDIS_URL", "redis://localhost:6379/0")):
        assert f'env_{name.split("_")[0].lower()}_url("{name}", "{default}")' in settings_source
        assert f"${{{name}:-{default}}}" in script
