"""What a consumer knows about one partition it owns: :class:`PartitionState`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class PartitionState:
    """One partition's state in a consumer's loop (one object per partition, one dict)."""

    #: next offset to count: what this instance counted (or read from Redis on assignment)
    next: int | None = None
    #: end offset seen by the latest fetch or end-offset probe
    highwater: int | None = None
    #: fetch position while nothing was counted yet
    position: int | None = None
    #: the offset last committed to Kafka
    committed: int | None = None
    #: polled batches not yet counted: (first offset, first record's timestamp, next offset,
    #: last record's timestamp)
    unapplied: deque[tuple[int, int, int, int]] = field(default_factory=deque)
    #: the newest record timestamp counted
    last_ts: int | None = None
    #: when the partition was last caught up (ms since the epoch)
    caught_up_ms: int | None = None

    def forget_times(self) -> None:
        """Drop what time lag was derived from (the partition was assigned or revoked)."""
        self.unapplied.clear()
        self.last_ts = None
        self.caught_up_ms = None
