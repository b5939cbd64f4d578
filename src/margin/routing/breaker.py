"""Per-backend circuit breakers with half-open probing, and what `/admin/backends` shows about each backend.

closed → open: after `failures` consecutive backend faults. open: the backend is skipped (its requests go to
their fallbacks, or get 503 `backend_unavailable`). After `cooldown_s` it is half-open: exactly one request
(the probe) is let through; its success closes the circuit, its fault re-opens it for another `cooldown_s`.
A probe that ends without a verdict (a client error, an upstream 429, its caller went away) frees the slot
for the next request (`release`); one that never reports at all frees it after `cooldown_s`.

Only faults of the backend itself count (`pipeline.steps.call.backend_fault`): client errors, full queues, upstream
429s and exceptions a request's input provoked never do, so no caller can take a backend down for everyone.

Per process: with several workers each keeps its own view (each sees the faults of its own requests).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger("margin.breaker")

RECENT_ERRORS = 10
RECENT_LATENCIES = 256


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class BackendHealth:
    state: State = State.CLOSED
    failures: int = 0  # consecutive faults
    opened_at: float | None = None  # clock time the circuit last opened
    probe_since: float | None = None  # a half-open probe is out since then
    ok: int = 0
    faults: int = 0
    opened: int = 0  # times the circuit opened
    errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES))


@dataclass(slots=True)
class Breakers:
    failures: int = 5
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _states: dict[str, BackendHealth] = field(default_factory=dict)

    def _state(self, backend: str) -> BackendHealth:
        state = self._states.get(backend)
        if state is None:
            state = self._states[backend] = BackendHealth()
        return state

    def _cooled(self, state: BackendHealth, now: float) -> bool:
        return state.opened_at is not None and now >= state.opened_at + self.cooldown_s

    def _probe_free(self, state: BackendHealth, now: float) -> bool:
        return state.probe_since is None or now >= state.probe_since + self.cooldown_s

    def available(self, backend: str) -> bool:
        """Whether a request may plan to use this backend (does not take the probe slot: see `acquire`)."""
        state = self._states.get(backend)
        if state is None or state.state is State.CLOSED:
            return True
        now = self.clock()
        return self._cooled(state, now) and self._probe_free(state, now)

    def acquire(self, backend: str) -> bool:
        """Right before a call: True if it may go. A cooled-down open circuit turns half-open and this call is
        its one probe; while a probe is out, everyone else is refused."""
        state = self._states.get(backend)
        if state is None or state.state is State.CLOSED:
            return True
        now = self.clock()
        if not (self._cooled(state, now) and self._probe_free(state, now)):
            return False
        state.state, state.probe_since = State.HALF_OPEN, now
        return True

    def success(self, backend: str, latency_s: float | None = None) -> None:
        state = self._state(backend)
        if state.state is not State.CLOSED:
            log.warning("backend %s: circuit closed (a call to it succeeded)", backend)
        state.ok += 1
        state.failures = 0
        state.state, state.opened_at, state.probe_since = State.CLOSED, None, None
        if latency_s is not None:
            state.latencies.append(latency_s)

    def failure(self, backend: str, code: str | None = None, message: str = "") -> None:
        """A backend fault. Opens the circuit after `failures` in a row, or at once when it was the probe."""
        state = self._state(backend)
        state.faults += 1
        state.failures += 1
        self.note(backend, code, message, fault=True)
        if state.state is State.HALF_OPEN or state.failures >= self.failures:
            if state.state is not State.OPEN:
                state.opened += 1
                log.warning(
                    "backend %s: circuit open for %.0f s after %d fault(s) in a row (last: %s %s); its requests go "
                    "to their fallbacks or get 503 backend_unavailable",
                    backend,
                    self.cooldown_s,
                    state.failures,
                    code,
                    message[:200],
                )
            state.state, state.opened_at, state.probe_since = State.OPEN, self.clock(), None

    def release(self, backend: str) -> None:
        """The call ended without saying whether the backend is healthy (a client error, an upstream 429, the
        caller went away): a half-open circuit's probe slot is freed at once for the next request."""
        state = self._states.get(backend)
        if state is not None and state.state is State.HALF_OPEN:
            state.probe_since = None

    def note(self, backend: str, code: str | None, message: str, *, fault: bool = False) -> None:
        """Keep an error in the backend's recent list (faults and errors that are not, such as upstream 429)."""
        self._state(backend).errors.append({"at": self.wall(), "code": code, "message": message[:300], "fault": fault})

    def state_of(self, backend: str) -> State:
        """The circuit as a caller would find it now (an open circuit past its cooldown reads half-open)."""
        state = self._states.get(backend)
        if state is None:
            return State.CLOSED
        if state.state is State.OPEN and self._cooled(state, self.clock()):
            return State.HALF_OPEN
        return state.state

    def describe(self, backend: str) -> dict[str, Any]:
        """State, counts, recent errors (newest first) and the latencies of recent successful calls (sorted)."""
        state = self._states.get(backend) or BackendHealth()
        probe_in = None
        if state.state is State.OPEN and state.opened_at is not None:
            probe_in = round(max(0.0, state.opened_at + self.cooldown_s - self.clock()), 3)
        return {
            "state": str(self.state_of(backend)),
            "consecutive_faults": state.failures,
            "probe_in_s": probe_in,
            "ok": state.ok,
            "faults": state.faults,
            "opened": state.opened,
            "recent_errors": list(reversed(state.errors)),
            "latencies_s": sorted(state.latencies),
        }

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            name: {"failures": s.failures, "open": self.state_of(name) is State.OPEN, "state": str(self.state_of(name))}
            for name, s in self._states.items()
        }
