"""Relay scenarios in the JSON form of the fixtures (bluesky-social/indigo relay test data).

A scenario is ``{accounts, messages: [{frame: {header, body}, drop, invalid, update}]}`` where binary
values are ``{"$bytes": base64}`` and CID links ``{"$link": cid}``. A single ``#commit`` body on its own
(the ``firehose_commit_*.json`` fixtures) is read as a one-message scenario.
"""

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.cid import cid_from_text
from protocol.testing import encode_frame


@dataclass(frozen=True, slots=True)
class ScenarioMessage:
    frame: bytes
    seq: int | None
    type: str | None
    dropped: bool  # a correct relay would not forward this message (stale rev, duplicate seq, ...)


def from_json_value(value: Any) -> Any:
    """Turns the JSON encoding of the data model back into the values DAG-CBOR encodes."""
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"] + "=" * (-len(value["$bytes"]) % 4))
        if set(value) == {"$link"}:
            return cid_from_text(value["$link"])
        return {key: from_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json_value(item) for item in value]
    return value


def load_scenario(path: Path) -> list[ScenarioMessage]:
    data = json.loads(path.read_text())
    if "messages" not in data:
        data = {"messages": [{"frame": {"header": {"op": 1, "t": "#commit"}, "body": data}, "drop": False}]}
    messages = []
    for message in data["messages"]:
        header = message["frame"]["header"]
        body = from_json_value(message["frame"]["body"])
        messages.append(
            ScenarioMessage(
                frame=encode_frame(header, body),
                seq=body.get("seq"),
                type=header.get("t"),
                dropped=bool(message.get("drop")),
            )
        )
    return messages
