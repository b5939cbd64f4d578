"""The time limits of one streamed backend call, enforced by a single timer per stream.

A stream has three limits: the first event must arrive within `first_token_s` of the request, no gap between
two reads may exceed `idle_s`, and the whole stream must end within `total_s`. Arming a timer per read would
cost a timer handle per chunk; instead each read only notes the loop time (`tick`), and one timer, due at the
earliest limit, wakes up, re-arms itself if reads came since, and otherwise calls `expire(reason)` once. The
caller's `expire` makes the pending read fail (e.g. `StreamReader.set_exception`), so the stream ends where it
reads, in its own task: nothing is cancelled from outside.
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
        self._last: float | None = None  # loop time of the latest read
        self.reason: str | None = None  # first_token | idle | total, once expired
        self._handle = self._loop.call_at(self._due()[0], self._check)

    def tick(self) -> None:
        """A read arrived (called per read: one clock read, no timer work)."""
        self._last = self._loop.time()

    def _due(self) -> tuple[float, str]:
        limit, reason = (self._first_by, "first_token") if self._last is None else (self._last + self._idle_s, "idle")
        return (self._end_by, "total") if self._end_by <= limit else (limit, reason)

    def _check(self) -> None:
        due, reason = self._due()
        if self._loop.time() >= due:
            self.reason = reason
            self._expire(reason)
            return
        self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        self._handle.cancel()
