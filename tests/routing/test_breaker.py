"""The circuit breaker's states: closed → open after N faults in a row, half-open after the cooldown with
exactly one probe, closed by the probe's success or re-opened by its fault; a lost probe frees its slot."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from margin.routing.breaker import Breakers, State


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def breakers(clock: Clock) -> Breakers:
    return Breakers(failures=2, cooldown_s=10, clock=clock, wall=lambda: 1_700_000_000.0)


def test_opens_after_consecutive_faults_only() -> None:
    clock = Clock()
    b = breakers(clock)
    b.failure("up", "upstream_error", "HTTP 502")
    b.success("up", 0.01)  # a success in between resets the count
    b.failure("up", "upstream_error", "HTTP 502")
    assert b.state_of("up") is State.CLOSED and b.acquire("up")
    b.failure("up", "upstream_timeout", "silent")
    assert b.state_of("up") is State.OPEN
    assert not b.available("up") and not b.acquire("up")
    assert b.describe("up")["probe_in_s"] == 10


def test_half_open_lets_exactly_one_probe_through_and_its_success_closes() -> None:
    clock = Clock()
    b = breakers(clock)
    b.failure("up")
    b.failure("up")
    clock.now += 10
    assert b.state_of("up") is State.HALF_OPEN
    assert b.available("up")  # routing may plan on it (does not take the slot)
    assert b.acquire("up")  # the probe
    assert not b.available("up") and not b.acquire("up")  # everyone else waits for the probe
    b.success("up", 0.02)
    assert b.state_of("up") is State.CLOSED and b.acquire("up") and b.acquire("up")
    assert b.describe("up")["opened"] == 1


def test_a_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    b = breakers(clock)
    b.failure("up")
    b.failure("up")
    clock.now += 10
    assert b.acquire("up")
    b.failure("up", "upstream_error", "still down")
    assert b.state_of("up") is State.OPEN and not b.acquire("up")
    clock.now += 9.9
    assert not b.acquire("up")
    clock.now += 0.1
    assert b.acquire("up")
    assert b.describe("up")["opened"] == 2


def test_a_probe_that_never_reports_frees_the_slot_after_the_cooldown() -> None:
    clock = Clock()
    b = breakers(clock)
    b.failure("up")
    b.failure("up")
    clock.now += 10
    assert b.acquire("up")  # its caller goes away: neither success nor failure
    clock.now += 5
    assert not b.acquire("up")
    clock.now += 5
    assert b.acquire("up")


def test_describe_keeps_recent_errors_newest_first_and_latencies() -> None:
    clock = Clock()
    b = breakers(clock)
    for i in range(15):
        b.note("up", "upstream_rate_limited", f"429 number {i}")
    b.failure("up", "upstream_error", "x" * 1000)
    b.success("up", 0.3)
    b.success("up", 0.1)
    described = b.describe("up")
    errors = described["recent_errors"]
    assert len(errors) == 10 and errors[0]["code"] == "upstream_error" and errors[0]["fault"] is True
    assert len(errors[0]["message"]) == 300 and errors[1]["message"] == "429 number 14" and not errors[1]["fault"]
    assert described["latencies_s"] == [0.1, 0.3]
    assert (described["ok"], described["faults"], described["state"]) == (2, 1, "closed")
    assert breakers(clock).describe("never-seen")["state"] == "closed"


def test_a_probe_without_a_verdict_frees_the_slot_at_once() -> None:
    """A client error or an upstream 429 says nothing about the backend's health: the next request probes, so
    a caller cannot keep a recovering backend out by sending bad requests when it half-opens."""
    clock = Clock()
    b = breakers(clock)
    b.failure("up")
    b.failure("up")
    clock.now += 10
    assert b.acquire("up") and not b.acquire("up")
    b.release("up")
    assert b.state_of("up") is State.HALF_OPEN and b.acquire("up")
    b.success("up")
    b.release("up")  # nothing to release on a closed circuit
    assert b.state_of("up") is State.CLOSED


def test_opening_and_closing_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    """An operator sees why a backend's requests get 503: the circuit's open (with its last fault) and its close."""
    clock = Clock()
    b = breakers(clock)
    with caplog.at_level(logging.WARNING, logger="margin.breaker"):
        b.failure("up", "upstream_timeout", "sent no first event")
        assert caplog.messages == []
        b.failure("up", "upstream_timeout", "sent no first event")
        b.failure("up", "upstream_timeout", "sent no first event")  # already open: not logged again
        assert len(caplog.messages) == 1
        assert "up: circuit open for 10 s after 2 fault(s)" in caplog.messages[0]
        assert "upstream_timeout sent no first event" in caplog.messages[0]
        clock.now += 11
        assert b.acquire("up")
        b.success("up", 0.01)
        b.success("up", 0.01)  # already closed: not logged again
    assert len(caplog.messages) == 2 and "up: circuit closed" in caplog.messages[1]
