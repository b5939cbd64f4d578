"""Stopping a background task without letting it hold the process's shutdown.

`task.cancel(); await task` waits for ever if the task swallowed its cancellation: a library that catches
`CancelledError` in the middle of a call, or CPython 3.11's `asyncio.wait_for`, which loses a cancellation that
races the completion of what it waits for. Seen in a replica that never exited after SIGTERM: its governance
loop was back at its sleep, still "cancelling", and the lifespan's shutdown awaited it. So a stop is bounded,
and loops also check a flag of their own at each pass."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("margin")

STOP_S = 5.0  # how long a stop waits for a cancelled task to end


async def stop(task: asyncio.Task[Any] | None, timeout_s: float = STOP_S) -> bool:
    """Cancel `task` and wait for it to end, at most `timeout_s`; True when it ended (its exception, if it
    raised one, is retrieved and logged), False when it is left behind (logged)."""
    if task is None:
        return True
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=timeout_s)
    if not task.done():
        log.warning("task %s did not end within %.1f s of its cancellation: left behind", task.get_name(), timeout_s)
        return False
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("task %s ended with %r", task.get_name(), error)
    return True
