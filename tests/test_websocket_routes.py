"""Websockets to paths without a route are refused cleanly, through the real ASGI application and through daphne:
no exception, no ERROR log line, and /ws/metrics/ still answers."""

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import websockets
from channels.testing import WebsocketCommunicator
from django.conf import settings

from config.asgi import application
from harness.processes import log_tail, wait_until
from harness.servers import BASE_DIR, free_port

LOCAL = [(b"origin", b"http://127.0.0.1:5002"), (b"host", b"127.0.0.1:5002")]
UNROUTED = ["/ws/other/", "/ws/metrics", "/ws/metrics/extra/", "/", "/admin/", "/ws/%00/", "/ws/" + "x" * 10_000]
DAPHNE = Path(sys.executable).parent / "daphne"


async def handshake(path: str) -> tuple[bool, int | str | None]:
    communicator = WebsocketCommunicator(application, path, headers=LOCAL)
    try:
        return await communicator.connect(timeout=10)
    finally:
        await communicator.disconnect()


@pytest.mark.parametrize("path", UNROUTED, ids=lambda path: path[:20])
def test_it_refuses_a_websocket_to_a_path_without_a_route(path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    connected, _ = asyncio.run(handshake(path))
    assert connected is False
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], caplog.text


@pytest.mark.django_db(transaction=True)
def test_it_still_accepts_the_metrics_websocket(monkeypatch: pytest.MonkeyPatch) -> None:
    # The snapshot is read in a thread whose connection must not outlive the test database.
    monkeypatch.setitem(settings.DATABASES["default"], "CONN_MAX_AGE", 0)

    async def scenario() -> dict[str, object]:
        communicator = WebsocketCommunicator(application, "/ws/metrics/", headers=LOCAL)
        try:
            connected, _ = await communicator.connect(timeout=10)
            assert connected
            return await communicator.receive_json_from(timeout=10)
        finally:
            await communicator.disconnect()

    assert "eventsProcessed" in asyncio.run(scenario())


def test_it_logs_no_error_when_daphne_refuses_an_unrouted_websocket(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "daphne.log"
    with log_path.open("wb") as log:
        daphne = subprocess.Popen(
            [str(DAPHNE), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            cwd=BASE_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Listening on TCP address" in log_tail(log_path), timeout=30,
                   message=lambda: f"daphne to listen:\n{log_tail(log_path)}")

        async def refused_statuses() -> list[int]:
            statuses = []
            for path in ("/ws/other/", "/ws/metrics"):
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with websockets.connect(f"ws://127.0.0.1:{port}{path}", origin=f"http://127.0.0.1:{port}"):
                        pass
                statuses.append(refused.value.response.status_code)
            return statuses

        assert asyncio.run(refused_statuses()) == [403, 403]
    finally:
        daphne.terminate()
        daphne.wait(timeout=15)
    output = log_path.read_text(errors="replace")
    assert "WSREJECT /ws/other/" in output
    assert "Traceback" not in output and " ERROR " not in output, output
