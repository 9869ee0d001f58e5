"""``manage.py run_relay_sim --signed``: the relay, the PLC directory, the PDS and the DNS server of the signed
simulation in one process, the indexer's environment printed, commit faults and a mirror relay from flags."""

import asyncio
import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
from django.conf import settings
from websockets.asyncio.client import connect

from protocol.crypto import atproto_signing_key
from protocol.frames import decode_frame
from protocol.repo import verify_repository
from relaysim.relay_server import PATH
from relaysim.signed import CommitFault, SignedFirehose

EVENTS = 200
OFFSET = 7000
ARGS = ("--signed", "--seed", "4", "--actors", "100", "--events", str(EVENTS), "--rate", "0",
        "--commit-fault", "bad-signature=at:5", "--commit-fault", "too-big=every:50")


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", "run_relay_sim", *args], cwd=settings.BASE_DIR,
                          capture_output=True, text=True, timeout=60)


async def receive(url: str, count: int) -> list[bytes]:
    async with connect(f"{url}?cursor=0", max_size=None, open_timeout=5) as ws:
        return [await asyncio.wait_for(ws.recv(), 10) for _ in range(count)]


def test_it_serves_the_signed_simulation_and_prints_what_the_indexer_needs() -> None:
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_relay_sim", "--port", "0", "--mirror-port", "0",
         "--mirror-seq-offset", str(OFFSET), *ARGS],
        cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(6)]
        environment = dict(re.findall(r"(\w+)=(\S+)", next(line for line in lines if "environment" in line)))
        relays = [re.search(r"ws://\S+", line).group(0) for line in lines if "ws://" in line]
        assert set(environment) == {"PLC_URL", "IDENTITY_HOST_OVERRIDES", "DNS_NAMESERVERS"}
        pds_host, _, pds_address = environment["IDENTITY_HOST_OVERRIDES"].partition("=")
        assert pds_host == "pds.sim.test" and re.fullmatch(r"127\.0\.0\.1:\d+", environment["DNS_NAMESERVERS"])
        assert [url.endswith(PATH) for url in relays] == [True, True]

        async def both() -> tuple[list[bytes], list[bytes]]:
            return await receive(relays[0], EVENTS), await receive(relays[1], EVENTS)

        first, mirrored = asyncio.run(asyncio.wait_for(both(), 60))
        faults = [CommitFault.parse("bad-signature=at:5"), CommitFault.parse("too-big=every:50")]
        assert first == [frame for _, frame in SignedFirehose(seed=4, actors=100, faults=faults).frames(EVENTS)]
        for one, two in zip(first, mirrored, strict=True):
            body, other = decode_frame(one).body, decode_frame(two).body
            assert {**body, "seq": body["seq"] + OFFSET} == other

        # The repositories of those events, behind the addresses printed.
        did = decode_frame(first[0]).body.get("repo") or decode_frame(first[0]).body["did"]
        with httpx.Client(timeout=5) as client:
            document = client.get(f"{environment['PLC_URL']}/{did}").json()
            car = client.get(f"http://{pds_address}/xrpc/com.atproto.sync.getRepo", params={"did": did}).content
        assert verify_repository(car, did, atproto_signing_key(document, did)).commit.did == did

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0 and "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


@pytest.mark.parametrize(("args", "message"), [
    (("--commit-fault", "gap=at:3"), "--commit-fault needs --signed"),
    (("--signed", "--commit-fault", "gap=sometimes"), "is not KIND=every:N or KIND=at:N"),
    (("--signed", "--commit-fault", "typo=at:3"), "unknown commit fault 'typo'"),
    (("--signed", "--replay", "x.json"), "--signed makes synthetic events"),
    (("--mirror-port", "0", "--mirror-seq-offset", "-5"), "--start-seq plus --mirror-seq-offset must be at least 1"),
])
def test_it_rejects_options_that_do_not_go_together_with_one_line(args: tuple[str, ...], message: str) -> None:
    result = run_command(*args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
