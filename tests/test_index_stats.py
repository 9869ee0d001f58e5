"""``manage.py index_stats [--json]`` after a replayed scenario."""

import io
import json

import pytest
from django.core.management import call_command

from appview.indexing import services
from appview.models import RECORD_MODELS, RowCountDelta
from harness.events import DID, commit_frame, push
from pipeline import redis_store
from pipeline.cursor import claim_generation
from relaysim.scenarios import load_scenario
from tests.conftest import SCENARIOS
from tests.worker_helpers import drain, event_frame

pytestmark = pytest.mark.django_db(transaction=True)


def stats_json() -> dict[str, object]:
    out = io.StringIO()
    call_command("index_stats", "--json", stdout=out)
    return json.loads(out.getvalue())


def replay_post_lifecycle_and_more(batch_size: int = 100) -> None:
    client = redis_store.connect()
    claim_generation("relay.test", 1)  # the generation harness.events.push writes, as run_firehose would
    push(client, [(m.seq, m.frame) for m in load_scenario(SCENARIOS / "post_lifecycle.json")])  # type: ignore[misc]
    push(client, [
        (40_000_000, commit_frame(40_000_000, [("create", "com.example.note/3lmxjza3h2i27",
                                                {"$type": "com.example.note", "text": "hi"})])),
        (40_000_001, event_frame(40_000_001, "#account", did="did:plc:deactivated1", active=False,
                                 status="deactivated")),
        (40_000_002, event_frame(40_000_002, "#account", did="did:plc:gone1", active=False, status="deleted")),
    ])
    drain(batch_size=batch_size)


def test_it_prints_the_exact_counts_after_a_scenario() -> None:
    replay_post_lifecycle_and_more()
    expected_records = {model.collection: 0 for model in RECORD_MODELS}
    expected_records.update({"app.bsky.feed.post": 1, "app.bsky.feed.threadgate": 1, "app.bsky.feed.postgate": 1,
                             "app.bsky.actor.profile": 1, "com.example.note": 1})
    assert stats_json() == {
        "records": expected_records,
        # The repo, the author of the liked post, and the two accounts of the #account events.
        "actors": {"total": 4, "active": 2, "deactivated": 1, "takendown": 0, "suspended": 0, "deleted": 1,
                   "desynchronized": 0, "throttled": 0},
        "repos": {"desynchronized": 0, "resyncing": 0, "error": 0, "queued": 0},
        "cursor": 40_000_002,
        "metrics": {"#account": 2, "#commit": 7, "#identity": 0, "#sync": 0, "errors": 0, "totalEvents": 9},
    }


def test_it_keeps_the_counts_when_the_ledger_is_folded() -> None:
    replay_post_lifecycle_and_more(batch_size=1)
    before = stats_json()
    assert RowCountDelta.objects.filter(key=RowCountDelta.ACTOR_KEY).count() > 1
    services.compact_row_counts()
    assert RowCountDelta.objects.filter(key=RowCountDelta.ACTOR_KEY).count() == 1
    assert stats_json() == before


def test_it_prints_a_readable_table() -> None:
    replay_post_lifecycle_and_more()
    out = io.StringIO()
    call_command("index_stats", stdout=out)
    text = out.getvalue()
    assert "Records by collection" in text and "Actors" in text and "cluster:metrics" in text
    assert any(line.split() == ["app.bsky.feed.post", "1"] for line in text.splitlines())
    assert any(line.split() == ["totalEvents", "9"] for line in text.splitlines())
    assert "Durable cursor: 40000002" in text
    assert DID not in text
