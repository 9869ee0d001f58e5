"""The Lua scripts of the pipeline (``lua/*.lua``), read once at import, each with its SHA1 for EVALSHA."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent / "lua"


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: bytes  # hex digest, as EVALSHA takes it

    @classmethod
    def load(cls, name: str) -> "Script":
        source = (DIRECTORY / f"{name}.lua").read_text()
        return cls(source=source, sha=hashlib.sha1(source.encode()).hexdigest().encode())


PUSH = Script.load("push")  # run_firehose: a batch into firehose:events, with firehose:cursor
ACK = Script.load("ack")  # run_worker: acknowledge a committed batch and count it in cluster:metrics
