"""Follow-up raises of budget counters made from the ledger (a lost counter seeded again, a restart pass, a
shared budget's counter made for the first time: the rows of requests that were in flight come later).

The rebuild reads the ledger, which lacks the rows still waiting in the other processes' outboxes (up to their
`storage.flush_interval_ms` of traffic, whose settlements were lost with the counter): the counter comes back
that much too low, for the rest of its window. Once those outboxes have been ingested (2 × the flush interval
and a margin), and twice more later, the counter is raised to the ledger's spend again. The counter and the
ledger are both lower bounds of what was spent, so their maximum is one too, and the late rows are counted
within seconds instead of never. (Save a request whose row reached the ledger before its settlement reached the
store, still reserved or retrying: it is then counted twice, an overcharge, never an overspend, as after a
restart pass.) It cannot see late rows that the counter's own settlements since the rebuild hide (a counter
above the ledger is left alone): it narrows the gap, it does not close it.

The raises run in one background task of the governance service, never on a request's path: pending entries
are deduplicated per counter (a newer rebuild starts its schedule again) and capped; a failure (ledger or
store unreachable) is logged and tried again at the next due time, or dropped after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from margin.governance.admission import BudgetHold
from margin.logs import printable

log = logging.getLogger("margin.governance")

MARGIN_S = 0.5  # past 2 × the flush interval: an ingest batch's own time
LATER_S = (5.0, 30.0)  # the follow-ups after the first (slow ingests, a database that was briefly down)
MAX_PENDING = 10_000


def delays_for(flush_interval_ms: int) -> tuple[float, ...]:
    """Seconds after a rebuild at which its counter is raised to the ledger's spend again."""
    first = 2 * flush_interval_ms / 1000 + MARGIN_S
    return (first, *(first + later for later in LATER_S))


@dataclass(slots=True)
class _Entry:
    item: BudgetHold
    start: float  # time.monotonic() of the rebuild
    step: int = 0  # the index in `delays_s` of the next raise


class CatchUp:
    """The pending follow-up raises; `run` does them when due."""

    def __init__(self, delays_s: Sequence[float], cap: int = MAX_PENDING) -> None:
        self.delays_s = tuple(delays_s)  # overridable (tests): read when an entry is scheduled or advanced
        self.cap = cap
        self._pending: dict[str, _Entry] = {}
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def schedule(self, item: BudgetHold) -> None:
        """Follow up on the counter of `item`, rebuilt now (again from the first delay if already pending)."""
        name = item.hold.counter
        if not self.delays_s:
            return
        if name not in self._pending and len(self._pending) >= self.cap:
            log.warning("budget %s: too many counters to follow up on; not followed up", name)
            return
        self._pending[name] = _Entry(item, time.monotonic())
        self._wake.set()

    def _due_at(self, entry: _Entry) -> float:
        delays = self.delays_s or (0.0,)  # emptied while entries were pending: each runs once, now
        return entry.start + delays[min(entry.step, len(delays) - 1)]

    def _next_wait(self) -> float | None:
        if not self._pending:
            return None
        return max(min(self._due_at(entry) for entry in self._pending.values()) - time.monotonic(), 0.0)

    def _due(self) -> list[tuple[str, _Entry]]:
        now = time.monotonic()
        return [(name, entry) for name, entry in self._pending.items() if self._due_at(entry) <= now]

    def _advance(self, name: str, entry: _Entry) -> None:
        if self._pending.get(name) is not entry:  # scheduled again while it ran: the new schedule stands
            return
        entry.step += 1
        if entry.step >= len(self.delays_s):
            del self._pending[name]

    async def run(self, raise_one: Callable[[BudgetHold], Awaitable[object]]) -> None:
        """Forever (cancelled by the service's close): wait for the next due entry, then raise each due one."""
        while True:
            self._wake.clear()
            wait = self._next_wait()
            if wait is None or wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            for name, entry in self._due():
                try:
                    await raise_one(entry.item)
                except Exception as exc:  # the ledger or the store unreachable: the next due time tries again
                    log.warning("budget %s: follow-up raise failed: %s", name, printable(str(exc)))
                self._advance(name, entry)
