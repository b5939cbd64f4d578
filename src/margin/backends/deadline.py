"""The time limits of one streamed backend call, enforced by a single timer per stream.

A stream has three limits: the first event must arrive within `first_token_s` of the request, a read of the
upstream may not wait longer than `idle_s`, and the whole stream must end within `total_s`. Only time spent
waiting on the upstream counts as idle: while the stream's consumer is busy elsewhere (writing to a slow
client, which has its own write timeout), nothing is read and nothing is idle, so a client that reads slowly
can never make a healthy upstream look stalled (and open its circuit for everyone).

Arming a timer per read would cost a timer handle per chunk; instead each read only notes the loop time
(`waiting` before it, `received` after), and one timer, due at the earliest limit, wakes up, re-arms itself
when nothing is overdue, and otherwise calls `expire(reason)` once. The caller's `expire` makes the pending
read fail (e.g. `StreamReader.set_exception`), so the stream ends where it reads, in its own task: nothing is
cancelled from outside. The timer never fires later than a limit; it may fire early and re-arm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class StreamDeadline:
    def __init__(
        self,
        started: float,
        *,
        first_token_s: float,
        idle_s: float,
        total_s: float,
        expire: Callable[[str], None],
    ) -> None:
        """`started`: the loop time the request was sent (first-token and total limits count from it)."""
        self._loop = asyncio.get_running_loop()
        self._first_by = started + first_token_s
        self._end_by = started + total_s
        self._idle_s = idle_s
        self._expire = expire
        self._first_event = False
        self._waiting_since: float | None = started  # a read of the upstream is pending since then
        self.reason: str | None = None  # first_token | idle | total, once expired
        self._handle = self._loop.call_at(self._due(started)[0], self._check)

    def waiting(self) -> None:
        """A read of the upstream starts (one clock read, no timer work)."""
        self._waiting_since = self._loop.time()

    def received(self, *, event: bool) -> None:
        """The read returned bytes; `event`: they completed at least one event (the first token counts then)."""
        self._waiting_since = None
        if event and not self._first_event:  # once a stream: from now on the idle limit may come first
            self._first_event = True
            self._handle.cancel()
            self._handle = self._loop.call_at(self._due(self._loop.time())[0], self._check)

    def _due(self, now: float) -> tuple[float, str]:
        if not self._first_event:
            limit, reason = self._first_by, "first_token"
        elif self._waiting_since is None:  # not reading: look again one idle period from now
            limit, reason = now + self._idle_s, ""
        else:
            limit, reason = self._waiting_since + self._idle_s, "idle"
        return (self._end_by, "total") if self._end_by <= limit else (limit, reason)

    def _check(self) -> None:
        now = self._loop.time()
        due, reason = self._due(now)
        if reason and now >= due:
            self.reason = reason
            self._expire(reason)
            return
        self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        self._handle.cancel()
