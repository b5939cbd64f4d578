"""Polling for what a running gateway does in the background (ledger rows, settlements), and for whether it
still answers while an attack runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
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


def stalled_upload(line: bytes, release: threading.Event, sent: threading.Semaphore) -> Iterable[bytes]:
    """A batch file upload's multipart body (boundary `b`) whose end waits for `release`, as a slow client's:
    `sent` is released once all but its end is handed over (the gateway then has its head: a test waits for
    that, not for a fixed time, before it counts the places the upload takes)."""
    yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n' + line
    sent.release()
    release.wait(60)
    yield b"\r\n--b--\r\n"


def all_sent(sent: threading.Semaphore, count: int, settle_s: float = 1.0, timeout_s: float = 60) -> None:
    """Wait until `count` stalled uploads have handed over all but their end, then `settle_s` for the gateway
    to read their heads (milliseconds when healthy)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(count):
        if not sent.acquire(timeout=max(0.0, deadline - time.monotonic())):
            pytest.fail(f"fewer than {count} uploads were sent within {timeout_s:.0f} s")
    time.sleep(settle_s)
