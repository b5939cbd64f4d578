"""Polling for what a running gateway does in the background (ledger rows, settlements), and for whether it
still answers while an attack runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.helpers import repeating


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def watched(url: str, timeout_s: float = 60) -> Iterator[list[float]]:
    """While the block runs, `/readyz` is asked again and again; yields the list of its answer times (an
    answer other than 200 counts as an endless wait) once the first answer is in, so the whole block is
    watched: a short block used to end before the polling thread had asked once, and a bound on its waits
    then held over none."""
    waits: list[float] = []
    polling = threading.Event()

    def poll(done: threading.Event) -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            while not done.is_set():
                started = time.perf_counter()
                ok = client.get("/readyz").status_code == 200
                waits.append(time.perf_counter() - started if ok else float("inf"))
                polling.set()
                time.sleep(0.01)

    with repeating(poll):
        if not polling.wait(timeout_s):
            pytest.fail(f"/readyz did not answer within {timeout_s:.0f} s")
        yield waits
