"""Per-backend circuit breakers: after `failures` consecutive backend faults a backend is skipped for
`cooldown_s`; then requests go through again (half-open): one success closes it, one fault re-opens it.
Only faults of the backend itself count (`pipeline.steps.call.backend_fault`): client errors, full queues and
exceptions a request's input provoked never do, so no caller can take a backend down for everyone."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class _State:
    failures: int = 0
    open_until: float = 0.0


@dataclass(slots=True)
class Breakers:
    failures: int = 5
    cooldown_s: float = 30.0
    _states: dict[str, _State] = field(default_factory=dict)

    def _state(self, backend: str) -> _State:
        state = self._states.get(backend)
        if state is None:
            state = self._states[backend] = _State()
        return state

    def available(self, backend: str) -> bool:
        state = self._states.get(backend)
        return state is None or state.failures < self.failures or time.monotonic() >= state.open_until

    def success(self, backend: str) -> None:
        self._state(backend).failures = 0

    def failure(self, backend: str) -> None:
        state = self._state(backend)
        state.failures += 1
        if state.failures >= self.failures:
            state.open_until = time.monotonic() + self.cooldown_s

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = time.monotonic()
        return {
            name: {"failures": s.failures, "open": s.failures >= self.failures and now < s.open_until}
            for name, s in self._states.items()
        }
