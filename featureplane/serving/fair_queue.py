"""Start-time fair queueing (SFQ) of waiting requests by principal, weighted by their cost.

Each principal's requests get, in arrival order, a start tag: the later of the queue's virtual
time and the finish tag of the principal's previous request; a request's finish tag is its
start tag plus its cost (entity rows). The queue hands out the smallest start tag first (the
earliest arrival among equals), and its virtual time is the start tag last handed out. So a
principal that sends fifty 1,000-row batches at once takes one batch's turn, then another
principal's request goes, and so on: backlogged principals share the workers by rows, within
one request's cost of each other, and a principal that was idle is owed nothing for the time
it was away.
"""

from __future__ import annotations

import heapq
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class FairQueue(Generic[Item]):
    """Items queued per principal, taken in start-time fair order of their costs."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._finish: dict[str, float] = {}
        self._virtual = 0.0
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, principal: str, cost: float, item: Item) -> None:
        start = max(self._virtual, self._finish.get(principal, 0.0))
        self._finish[principal] = start + max(cost, 1.0)
        self._arrivals += 1
        heapq.heappush(self._heap, (start, self._arrivals, item))

    def get(self) -> Item:
        """The next item (IndexError when none waits)."""
        self._virtual, _, item = heapq.heappop(self._heap)
        if not self._heap:  # nobody waits: past finish tags say nothing any more
            self._finish.clear()
        return item
