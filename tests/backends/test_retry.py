"""Retry waits: exponential backoff with full jitter, Retry-After honoured up to a bound, never past the
call's deadline; and a stream's time limits enforced by one timer (first event, silence, total)."""

from __future__ import annotations

import asyncio
import random

import pytest

from margin.backend_config import RetryConfig
from margin.backends.deadline import StreamDeadline
from margin.backends.retry import Backoff, retry_after_s


def test_backoff_grows_exponentially_within_full_jitter_and_stops_after_the_attempts() -> None:
    backoff = Backoff(RetryConfig(attempts=3, backoff_s=0.1, backoff_max_s=0.3), random.Random(7))
    for _ in range(200):
        first = backoff.delay(1, remaining_s=10)
        second = backoff.delay(2, remaining_s=10)
        third = backoff.delay(3, remaining_s=10)
        assert first is not None and 0 <= first <= 0.1
        assert second is not None and 0 <= second <= 0.2
        assert third is not None and 0 <= third <= 0.3  # capped at backoff_max_s
    assert backoff.delay(4, remaining_s=10) is None
    waits = [backoff.delay(3, remaining_s=10) for _ in range(200)]
    assert len({round(w or 0, 6) for w in waits}) > 100  # jittered, not one fixed wait


def test_retry_after_is_honoured_only_up_to_its_bound_and_the_deadline() -> None:
    backoff = Backoff(RetryConfig(attempts=2, backoff_s=0.01, retry_after_max_s=2), random.Random(1))
    wait = backoff.delay(1, remaining_s=10, retry_after=1.5)
    assert wait is not None and 1.5 <= wait <= 1.51
    assert backoff.delay(1, remaining_s=10, retry_after=30) is None  # too long: the caller gets the 429
    assert backoff.delay(1, remaining_s=1.0, retry_after=1.5) is None  # would end past the deadline
    assert Backoff(RetryConfig(attempts=0)).delay(1, remaining_s=10) is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("0", 0.0), (None, None), ("", None), ("soon", None), ("-1", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("inf", None), ("123456789", None), ("\u0663", None),
     ("\uff17", None), ("nan", None)],
)  # fmt: skip
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert retry_after_s(header) == seconds


async def _expiry(first_token_s: float, idle_s: float, total_s: float, reads: list[float]) -> str | None:
    """Reads that take the given times (s) each, back to back; then silence. The limit that expired, if any."""
    loop = asyncio.get_running_loop()
    expired = asyncio.Event()
    deadline = StreamDeadline(
        loop.time(), first_token_s=first_token_s, idle_s=idle_s, total_s=total_s, expire=lambda _: expired.set()
    )
    try:
        for wait in reads:
            deadline.waiting()
            try:
                await asyncio.wait_for(expired.wait(), wait)
                return deadline.reason
            except TimeoutError:
                deadline.received(event=True)
        deadline.waiting()
        try:
            await asyncio.wait_for(expired.wait(), 2)
        except TimeoutError:
            return None
        return deadline.reason
    finally:
        deadline.cancel()


async def test_stream_deadline_names_the_limit_that_passed() -> None:
    assert await _expiry(0.05, 10, 10, []) == "first_token"
    assert await _expiry(1, 0.05, 10, [0.01, 0.01]) == "idle"  # reads came, then silence
    assert await _expiry(1, 1.0, 0.3, [0.05] * 20) == "total"  # never idle, but past the total limit


async def test_only_waiting_on_the_upstream_counts_as_idle() -> None:
    """A consumer busy elsewhere (a slow client) for longer than the idle limit is not an idle upstream."""
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    deadline = StreamDeadline(loop.time(), first_token_s=0.5, idle_s=0.1, total_s=5, expire=fired.append)
    deadline.received(event=True)
    await asyncio.sleep(0.35)  # not reading: three idle periods pass
    assert fired == []
    deadline.waiting()
    await asyncio.sleep(0.35)  # reading, and the upstream is silent
    assert fired == ["idle"]
    deadline.cancel()


async def test_bytes_without_an_event_do_not_count_as_the_first_token() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    deadline = StreamDeadline(loop.time(), first_token_s=0.2, idle_s=5, total_s=5, expire=fired.append)
    for _ in range(5):  # keep-alive comments every 0.05 s, no data event
        await asyncio.sleep(0.05)
        deadline.received(event=False)
        deadline.waiting()
    await asyncio.sleep(0.2)
    assert fired == ["first_token"]
    deadline.cancel()


async def test_a_cancelled_deadline_stays_quiet() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    deadline = StreamDeadline(loop.time(), first_token_s=0.1, idle_s=0.1, total_s=0.1, expire=fired.append)
    deadline.cancel()
    await asyncio.sleep(0.3)  # past every limit
    assert fired == []


async def test_a_stall_right_after_the_first_event_ends_at_the_idle_limit_not_the_first_token_one() -> None:
    loop = asyncio.get_running_loop()
    expired = asyncio.Event()
    deadline = StreamDeadline(loop.time(), first_token_s=30, idle_s=0.05, total_s=60, expire=lambda _: expired.set())
    deadline.received(event=True)
    deadline.waiting()
    await asyncio.wait_for(expired.wait(), 5)  # not 30 s: the timer moved to the idle limit
    assert deadline.reason == "idle"
    deadline.cancel()
