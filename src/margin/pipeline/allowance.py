"""A hard budget's busy-time allowance, enforced: the analogue of `max_tokens`, for time.

A backend priced by busy time (`hardware`: TCO) is charged what the call measured, so a slow or queued
backend could charge past what a hard USD budget reserved for the request. The route step gives each such
candidate an allowance (`RouteDecision.busy_allowance`, `margin.governance.admission.busy_allowance_s`), the
busy time its reservation priced; here the call on it is bounded by it, counted from when the request entered
the backend's clock: busy ≤ wall ≤ allowance, so the charge ≤ the reservation. A whole answer is cancelled at
the allowance; a stream's reads of the backend are (the stream ends with an error event, as on a timeout).
Either ends as `BusyTimeAllowance`, a timeout the backend's circuit does not count. What a reader's slowness
or the scheduler adds past it is held at the allowance where the call is metered (`held_busy`), and so is the
energy the cost counts when it was measured (`priced_energy_cap`: RAPL sees the whole package, which may draw
more than the `watts_busy` the reservation priced)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from margin.errors import BusyTimeAllowance
from margin.pipeline.stream import close
from margin.types import Chunk

log = logging.getLogger("margin.call")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TimeAllowance:
    """One call's allowance: `seconds` of busy time on `backend`, until `deadline` (loop time)."""

    backend: str
    seconds: float
    deadline: float

    @classmethod
    def start(cls, backend: str, seconds: float) -> TimeAllowance:
        return cls(backend, seconds, asyncio.get_running_loop().time() + seconds)

    def reached(self) -> BusyTimeAllowance:
        return BusyTimeAllowance(
            f"the hard budget's time allowance was reached: backend {self.backend} is priced by busy time, and "
            f"this request's budget reserved {self.seconds:.3g}s of it (a larger max_tokens, or "
            "admission.hard_busy_reserve_s, allows more)"
        )

    async def within(self, call: Awaitable[T]) -> T:
        """`call`'s result, or `BusyTimeAllowance` once the allowance has run out (the call is cancelled)."""
        timer = asyncio.timeout_at(self.deadline)
        try:
            async with timer:
                return await call
        except TimeoutError as exc:
            if timer.expired():
                raise self.reached() from exc
            raise

    async def chunks(self, source: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """`source`'s events while the allowance lasts; then `BusyTimeAllowance` where the stream reads (the
        pending read is cancelled, which stops the backend's generation). `source` is closed in every case."""
        try:
            while True:
                try:
                    chunk = await self.within(anext(source))
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            await close(source)


def held_busy(busy_s: float, allowance: TimeAllowance | None, request_id: str) -> float:
    """The busy time to charge: what was measured, held at the allowance (belt and braces: the call was cut
    there, but a reader's write, the scheduler or a backend's own clock may add a little). The row's `busy_ms`
    is the charge's busy time, so it reads the held figure too; the measured one goes to the log."""
    if allowance is None or busy_s <= allowance.seconds:
        return busy_s
    log.info(
        "request %s: %.3fs busy on %s, held at its hard budget's allowance of %.3fs",
        request_id,
        busy_s,
        allowance.backend,
        allowance.seconds,
    )
    return allowance.seconds


def priced_energy_cap(allowance: TimeAllowance | None, watts_busy: float | None) -> float | None:
    """The most IT energy (J) the charge's cost may count: the allowance's energy as its reservation priced it
    (modelled at the backend's `watts_busy`; none without it). No allowance: no cap."""
    if allowance is None:
        return None
    return (watts_busy or 0.0) * allowance.seconds
