"""Request ids: UUIDv7 (time-ordered, so the ledger's unique index grows at its right edge), 32 hex digits."""

from __future__ import annotations

import time
import uuid

from margin.ledger.ids import request_id


def test_request_ids_are_uuid7_in_time_order() -> None:
    first = request_id()
    parsed = uuid.UUID(hex=first)
    assert len(first) == 32 and first == parsed.hex
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert abs(int(first[:12], 16) - time.time_ns() // 1_000_000) < 60_000  # its first 48 bits: Unix ms
    time.sleep(0.002)
    later = [request_id() for _ in range(1000)]
    assert all(first < other for other in later)  # a later millisecond sorts after
    assert len(set(later)) == 1000  # 74 random bits within a millisecond
