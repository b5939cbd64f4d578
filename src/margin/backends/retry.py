"""When and how long to wait before trying a backend call again (exponential backoff with full jitter).

Only failures that happened before the upstream produced any part of an answer are retried, and only those
that are safe to repeat: the connection was refused (the request never left), 502/503/504 (a proxy or the
server refused it), and 429 whose `Retry-After` is short. The caller decides what is retryable; this module
only decides the wait, and refuses a retry that could not finish before the call's deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from margin.backend_config import RetryConfig

RETRY_STATUSES = frozenset({502, 503, 504})


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` in seconds when it is a plain non-negative number (HTTP dates are not honoured; nor are
    digits of other scripts, which `float` would read)."""
    if not value or len(value) > 8 or not value.isascii():
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


@dataclass(slots=True)
class Backoff:
    """The retry plan of one backend. `delay(...)` is None when no further try should start."""

    config: RetryConfig
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, retry: int, *, remaining_s: float, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry number `retry` (1-based), or None to give up. `retry_after`: the
        upstream's 429 Retry-After (honoured only up to `retry_after_max_s`); `remaining_s`: time left before
        the call's deadline."""
        config = self.config
        if retry > config.attempts:
            return None
        if retry_after is not None:
            if retry_after > config.retry_after_max_s:
                return None
            wait = retry_after + self.rng.uniform(0, config.backoff_s)
        else:
            wait = self.rng.uniform(0, min(config.backoff_max_s, config.backoff_s * 2 ** (retry - 1)))
        return wait if wait < remaining_s else None
