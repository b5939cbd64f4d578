"""A cheap open-loop HTTP/1.1 load generator for the gateway sweep (benchmarks/gateway_sweep.py).

aiohttp (benchmarks/loadgen.py) costs about 0.2-0.3 ms of client CPU a request: at 2,000 RPS that is most of
one of this machine's two cores, so the client would be the ceiling. This one keeps raw keep-alive
connections (asyncio protocols on uvloop), writes pre-built request bytes and parses answers with
httptools (the C parser uvicorn uses): a few tens of µs a request.

Open loop: request i is due at start + i/rate whatever happened to earlier ones. It goes out on an idle
keep-alive connection, or a new one (up to `max_connections`; beyond that it waits for one, and that wait is
part of its latency). Latency runs from the moment the client issues the request (at, or just after, its
scheduled time) to the last byte of the answer, so a slow server shows up as latency, not as a lower offered
rate. The event loop's timers tick in about 1 ms steps, so requests go out in small bursts up to ~1 ms after
their schedule; that lag is the client's, not the server's, and is recorded apart (`lag_ms_total`, and
`late_starts`: requests issued more than 5 ms late, i.e. the client itself fell behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

LATE_S = 0.005


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Outcome:
    """Raw results of one open-loop run (latencies in ms, per kind of request)."""

    offered_rps: float
    duration_s: float
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0
    timeouts: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    late_starts: int = 0
    lag_ms_total: float = 0.0
    connections_opened: int = 0
    client_cpu_s: float = 0.0
    wall_s: float = 0.0


@dataclass
class _Pending:
    issued: float
    kind: str
    payload: bytes


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.current: _Pending | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def send(self, pending: _Pending) -> None:
        assert self.transport is not None
        self.current = pending
        self.transport.write(pending.payload)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._abort()

    def on_message_complete(self) -> None:
        pending, self.current = self.current, None
        if pending is None:
            return
        self.pool.completed(pending, self.parser.get_status_code())
        if self.parser.should_keep_alive() and self.transport is not None and not self.transport.is_closing():
            self.pool.release(self)
        else:
            self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)


class _Pool:
    def __init__(self, host: str, port: int, max_connections: int, outcome: Outcome) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.outcome = outcome
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.waiting: deque[_Pending] = deque()
        self.connecting = 0
        self.in_flight = 0
        self.recording = True
        self.drained = asyncio.Event()

    def fire(self, pending: _Pending) -> None:
        self.in_flight += 1
        self.drained.clear()
        if self.idle:
            connection = self.idle.pop()
            self.busy.add(connection)
            connection.send(pending)
        elif len(self.busy) + len(self.idle) + self.connecting < self.max_connections:
            self.connecting += 1
            asyncio.get_running_loop().create_task(self._open(pending))
        else:
            self.waiting.append(pending)

    async def _open(self, pending: _Pending) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError:
            self.connecting -= 1
            self._done(pending, None)
            return
        self.connecting -= 1
        self.outcome.connections_opened += 1
        self.busy.add(connection)
        connection.send(pending)

    def completed(self, pending: _Pending, status: int) -> None:
        self._done(pending, status)

    def _done(self, pending: _Pending, status: int | None) -> None:
        self.in_flight -= 1
        if self.recording:
            outcome = self.outcome
            if status == 200:
                latency = (time.perf_counter() - pending.issued) * 1000
                outcome.latencies_ms.setdefault(pending.kind, []).append(latency)
            else:
                outcome.errors += 1
            if status is not None:
                outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
        if self.in_flight == 0:
            self.drained.set()

    def release(self, connection: _Connection) -> None:
        self.busy.discard(connection)
        if self.waiting:
            self.busy.add(connection)
            connection.send(self.waiting.popleft())
        else:
            self.idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        if connection in self.busy:
            self.busy.discard(connection)
            if connection.current is not None:
                pending, connection.current = connection.current, None
                self._done(pending, None)
        elif connection in self.idle:
            self.idle.remove(connection)
        if self.waiting and len(self.busy) + len(self.idle) + self.connecting < self.max_connections:
            self.connecting += 1
            asyncio.get_running_loop().create_task(self._open(self.waiting.popleft()))

    def close_all(self) -> int:
        """Close every connection; returns how many requests were still unanswered."""
        left = self.in_flight
        self.recording = False
        for connection in [*self.busy, *self.idle]:
            connection._abort()
        self.waiting.clear()
        return left


async def open_loop(
    host: str,
    port: int,
    requests: Sequence[tuple[str, bytes]],
    rate: float,
    duration_s: float,
    *,
    max_connections: int = 1024,
    timeout_s: float = 10.0,
) -> Outcome:
    """Send `rate × duration_s` requests, cycling through `requests` ((kind, raw HTTP bytes) pairs)."""
    outcome = Outcome(rate, duration_s)
    pool = _Pool(host, port, max_connections, outcome)
    count = int(rate * duration_s)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    start = wall0 + 0.02
    interval = 1 / rate
    i = 0
    while i < count:
        now = time.perf_counter()
        while i < count and start + i * interval <= now:
            scheduled = start + i * interval
            lag = now - scheduled
            outcome.lag_ms_total += lag * 1000
            if lag > LATE_S:
                outcome.late_starts += 1
            kind, payload = requests[i % len(requests)]
            pool.fire(_Pending(time.perf_counter(), kind, payload))
            i += 1
        if i < count:
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pool.drained.wait(), timeout=timeout_s)
    outcome.timeouts = pool.close_all()
    outcome.errors += outcome.timeouts
    outcome.client_cpu_s = time.process_time() - cpu0
    outcome.wall_s = time.perf_counter() - wall0
    return outcome
