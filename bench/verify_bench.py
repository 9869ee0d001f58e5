"""CPU cost of verifying firehose commits (Sync v1.1) and of writing them with the simulator's SimRepo.

    .venv/bin/python bench/verify_bench.py [--records 1000] [--commits 2000] [--curve secp256k1]

Builds one repository of ``--records`` records (posts, likes, follows of realistic sizes), then writes
``--commits`` more commits of 1 to 3 ops (mostly creates, some updates and deletes) and verifies each
body with ``protocol.repo.verify_commit_event``, each check switched on in turn, so that the differences
give each check's cost. Prints CPU microseconds per commit (best of ``--rounds``). Not a test.
"""

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol.car import block_spans
from protocol.crypto import PrivateKey, PublicKey
from protocol.repo import check_block_cids, verify_commit_event
from relaysim.repos import CommitDiff, SimRepo
from relaysim.simulation import tid

START_US = 1_735_689_600_000_000
WHEN = "2025-01-01T00:00:00.000Z"
TEXT = "Verification costs what it costs, and the firehose does not wait for anyone to catch up. " * 3


def record(rng: random.Random, collection: str) -> dict[str, Any]:
    subject = f"at://did:plc:{rng.randbytes(12).hex()[:24]}/app.bsky.feed.post/{tid(rng.getrandbits(50), 1)}"
    cid = "bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454"
    if collection == "app.bsky.feed.post":
        return {"$type": collection, "text": TEXT[:rng.randint(60, 240)], "langs": ["en"], "createdAt": WHEN}
    if collection == "app.bsky.graph.follow":
        return {"$type": collection, "subject": subject[5:37], "createdAt": WHEN}
    return {"$type": collection, "subject": {"uri": subject, "cid": cid}, "createdAt": WHEN}


class Writer:
    """Commits of 1-3 ops on one SimRepo, with a clock that gives increasing revs."""

    def __init__(self, repo: SimRepo, rng: random.Random) -> None:
        self.repo = repo
        self.rng = rng
        self.clock = START_US
        self.paths: list[str] = []

    def commit(self, *, creates_only: bool = False) -> CommitDiff:
        rng = self.rng
        ops: list[tuple[str, str, dict[str, Any] | None]] = []
        for offset in range(rng.choice((1, 1, 1, 2, 3))):
            roll = 1.0 if creates_only else rng.random()
            if roll < 0.08 and self.paths:
                ops.append(("delete", self.paths.pop(rng.randrange(len(self.paths))), None))
            elif roll < 0.12 and self.paths:
                path = self.paths.pop(rng.randrange(len(self.paths)))
                ops.append(("update", path, record(rng, path.split("/")[0])))
                self.paths.append(path)
            else:
                collection = rng.choice(("app.bsky.feed.like",) * 6 + ("app.bsky.feed.post",) * 2
                                        + ("app.bsky.graph.follow", "app.bsky.feed.repost"))
                path = f"{collection}/{tid(self.clock + 1 + offset, 7)}"
                ops.append(("create", path, record(rng, collection)))
                self.paths.append(path)
        if len({path for _, path, _ in ops}) != len(ops):  # an update and a delete drew the same path
            ops = ops[:1]
        self.clock += 1000
        return self.repo.apply(ops, rev=tid(self.clock, 7))


def best_per_item(run: Callable[[], None], items: int, rounds: int) -> float:
    """CPU microseconds per item, best of ``rounds`` runs: process CPU time rather than the clock, since
    the machine is shared and waiting for a core is not a cost of the code."""
    timings = []
    for _ in range(rounds):
        started = time.process_time()
        run()
        timings.append(time.process_time() - started)
    return min(timings) / items * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--curve", choices=("secp256k1", "p256"), default="secp256k1")
    args = parser.parse_args()

    key = PrivateKey.generate(args.curve, seed=b"verify-bench")
    repo = SimRepo("did:plc:verifybenchaaaaaaaaaaaaa", key)
    writer = Writer(repo, random.Random(1))
    while len(repo.records) < args.records:
        writer.commit(creates_only=True)
    records = len(repo.records)
    started = time.process_time()
    bodies = [writer.commit() for _ in range(args.commits)]
    write_us = (time.process_time() - started) / args.commits * 1e6
    spans = [block_spans(body["blocks"]) for body in bodies]
    pairs = list(zip(bodies, spans, strict=True))
    public_key: PublicKey = key.public_key
    ops = sum(len(body["ops"]) for body in bodies) / len(bodies)
    blocks = sum(len(body_spans) for body_spans in spans) / len(spans)
    size = sum(len(body["blocks"]) for body in bodies) / len(bodies)

    def verify(signing_key: PublicKey | None, check_mst: bool) -> Callable[[], None]:
        def run() -> None:
            for body, body_spans in pairs:
                verify_commit_event(body, body_spans, signing_key, check_mst=check_mst)
        return run

    def hash_blocks() -> None:
        for body, body_spans in pairs:
            check_block_cids(body["blocks"], body_spans)

    def index_blocks() -> None:
        for body in bodies:
            block_spans(body["blocks"])

    count, rounds = len(pairs), args.rounds
    spans_us = best_per_item(index_blocks, count, rounds)
    hashing = best_per_item(hash_blocks, count, rounds)
    base = best_per_item(verify(None, False), count, rounds)
    signed = best_per_item(verify(public_key, False), count, rounds)
    inverted = best_per_item(verify(None, True), count, rounds)
    everything = best_per_item(verify(public_key, True), count, rounds)

    print(f"repository: {records} records, then {len(repo.records)}; {args.curve} key")
    print(f"commits: {count}, {ops:.2f} ops, {blocks:.1f} blocks, {size:.0f} CAR bytes on average")
    print(f"SimRepo.apply (write, sign, proof, CAR):     {write_us:7.1f} us/commit")
    print(f"block_spans (the worker's CAR index):        {spans_us:7.1f} us/commit")
    print(f"CID hashing of every block:                  {hashing:7.1f} us/commit")
    print(f"blocks, ops and commit checks (with hashing): {base:6.1f} us/commit")
    print(f"signature:                                   {signed - base:7.1f} us/commit")
    print(f"MST inversion (prevData):                    {inverted - base:7.1f} us/commit")
    print(f"verify_commit_event, everything:             {everything:7.1f} us/commit "
          f"({1e6 / everything:,.0f} commits/s on one core)")


if __name__ == "__main__":
    main()
