"""run_worker's garbage collector settings (appview.indexing.worker.settle_garbage_collector)."""

import gc
import weakref
from collections.abc import Iterator

import pytest

from appview.indexing.worker import GC_THRESHOLDS, settle_garbage_collector


@pytest.fixture
def settled() -> Iterator[None]:
    thresholds = gc.get_threshold()
    settle_garbage_collector()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.peer: Node | None = None


def test_it_takes_the_objects_of_start_up_out_of_collections(settled: None) -> None:
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS


def test_it_still_collects_garbage_in_cycles(settled: None) -> None:
    gc.collect()
    created = 300_000
    alive = weakref.WeakSet[Node]()
    for _ in range(created // 2):
        first, second = Node(), Node()
        first.peer, second.peer = second, first  # a cycle: reference counting alone never frees it
        alive.add(first)
        alive.add(second)
    # Automatic collections ran while the cycles piled up: what is left is under one threshold's worth.
    assert len(alive) < GC_THRESHOLDS[0] * 2
