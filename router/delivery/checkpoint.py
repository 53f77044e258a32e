"""A shard's checkpoint: the position below which every record is done.

Records are tracked in fetch (offset) order and may finish out of order when a parallelization
factor above 1 runs several key lanes at once. The committable position is the offset of the oldest
record not yet done, or one past the newest tracked record when all are done (offsets can have
gaps: compaction, transaction markers), or the starting position before anything was fetched. It is
what the consumer group commits (Kafka's "next offset to read"); the checkpoint *sequence number*
is that position minus one, the last record covered.

`committed` remembers what the group acknowledged, so a commit refused after a rebalance (fenced by
the generation) simply leaves the shard dirty and nothing pretends it moved.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class ShardCheckpoint:
    def __init__(self, start: int) -> None:
        self._start = start
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next = start  # one past the newest tracked offset
        self.committed = start

    def track(self, offset: int) -> None:
        """A record was fetched; it must be done before the checkpoint may pass it."""
        if offset < self._next:
            raise ValueError(f"offset {offset} tracked out of order (next is {self._next})")
        self._pending.append(offset)
        self._next = offset + 1

    def track_many(self, offsets: list[int]) -> None:
        """`track` for fetched records in offset order."""
        if offsets:
            if offsets[0] < self._next:
                raise ValueError(f"offset {offsets[0]} tracked out of order (next is {self._next})")
            self._pending.extend(offsets)
            self._next = offsets[-1] + 1

    def done(self, offsets: Iterable[int]) -> None:
        pending, done = self._pending, self._done
        for offset in offsets:
            if pending and pending[0] == offset and not done:
                pending.popleft()  # the usual case: records finish in order
            else:
                done.add(offset)
        while pending and pending[0] in done:
            done.discard(pending.popleft())

    def done_below(self, offset: int) -> None:
        """Every tracked record before `offset` is done (a tumbling window's final invocation
        succeeded: its records were held until then)."""
        pending = self._pending
        while pending and pending[0] < offset:
            pending.popleft()
        if self._done:
            self._done = {o for o in self._done if o >= offset}
        while pending and pending[0] in self._done:
            self._done.discard(pending.popleft())

    @property
    def position(self) -> int:
        """The offset the group should commit: everything before it is done."""
        return self._pending[0] if self._pending else self._next

    @property
    def next_offset(self) -> int:
        """One past the newest tracked record: anything below it was seen already."""
        return self._next

    @property
    def sequence_number(self) -> int:
        """Offset of the last record the checkpoint covers (-1 before the first)."""
        return self.position - 1

    @property
    def outstanding(self) -> int:
        """Records fetched and not yet done."""
        return len(self._pending)

    @property
    def dirty(self) -> bool:
        return self.position > self.committed

    def mark_committed(self, position: int) -> None:
        self.committed = max(self.committed, position)
