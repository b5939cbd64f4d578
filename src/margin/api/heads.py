"""The HTTP/1.1 protocol `margin serve` runs: uvicorn's httptools protocol with a bound on each header section
(a request's head: its URL and header lines; a chunked body's trailers), which uvicorn leaves unbounded. A
section over `server.max_header_bytes` gets 431 Request Header Fields Too Large (RFC 6585) and the connection
is closed, at most one read (uvloop's, ≤ 250 KB) after the limit was passed: the rest is never read.

What is counted, each never more than the section's true size, so a section within the limit is never refused:
- the reads in which httptools reports no request starting, no head ending and no body: reads wholly inside a
  head or a trailer section. httptools holds a header line until it ends, so one huge line (a 32 MiB cookie)
  is seen only this way. Any such report starts the count again (a keep-alive connection carries many
  requests);
- when a head ends, if the reads it came in total more than the limit: its URL and header lines (name, value
  and the 4 bytes of ": " and CRLF). A head that came in one read under the limit (nearly all) is not counted.
No callback is added per header line (uvicorn's `on_header` is left alone): ~0.6 µs a request in all, against
~16 µs for uvicorn's protocol around a trivial app.

Deadlines (uvicorn has none while it reads a request: a connection that sends half a head, or nothing, or stops
half-way through a body, was held for ever, and with it a file descriptor; the `ulimit -n` of a Debian shell is
1,024):
- a head must be whole within `server.head_timeout_s` (10 s) of the connection opening or of the request's first
  byte: a total, not an idle time, so a head sent a byte a second still ends. An idle connection that sent nothing
  is closed; one part-way through a head gets 408 Request Timeout and is closed. Between requests uvicorn's own
  keep-alive timeout (5 s) applies;
- a body may be idle at most `server.body_timeout_s` (30 s) between two reads (nginx's `client_body_timeout`),
  not counting the time the app leaves it unread (uvicorn pauses reading past 64 KiB) or the wait for a
  `100 Continue`: the idle time runs from the later of the client's last read and the app's last ask. Then the
  app reads a disconnect, and the client gets 408 unless an answer had started;
- at most `server.max_connections` connections per process: one more gets 503 and is closed before anything of
  it is read;
- a client that reads nothing of an answer for `write_timeout_s` has its connection reset, which frees the
  unsent bytes: a JSON answer is handed to the transport whole, and a close would keep it until the client
  reads (and the kernel's part of it, up to its send buffer, even after that). `margin.serve` sets it 2 s past
  `server.stream_write_timeout_s`, by when the app's own watch (margin.api.client.StallWatch) has ended a
  stalled stream and recorded why.
A deadline is one `call_later` timer per connection, armed only while a request is part-way in: a request that
arrives in one read (nearly all) arms none after its connection's first.

Every answer the protocol makes itself (431, 408, 503, and 400 for bytes that are not HTTP, as uvicorn's) carries
a request id (`x-margin-request-id`, `x-request-id`, also in the warning logged) and `x-margin-cost-usd:
0.000000000`, and is counted in `margin_rejections_total` under its `REASONS` code through the gateway's
`refused`, which the app puts in uvicorn's lifespan state (`PROTOCOL_REFUSED`; `margin.app.Gateway`).

The limits reach the protocol as a `functools.partial` of this class (`margin.serve`), which pickles to the
worker processes of `--workers N` with uvicorn's `Config`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from margin.api.errors import unspent_headers
from margin.ledger.ids import request_id as new_request_id

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
LINE_FRAMING = len(b": \r\n")  # the least a header line adds to its name and value
TOO_LARGE = b"Request header fields too large."
TIMED_OUT = b"Request timed out."
TOO_MANY = b"Too many connections."
INVALID = b"Invalid HTTP request received."
HEAD, BODY = "head", "body"
LINGER_NONE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s
# the attribute set on the cycle of a request still running when the server begins to stop (its connection's
# `shutdown`): a cancellation it gets then is the end of `server.shutdown_grace_s` (margin.api.client's `stopping`)
STOPPING = "margin_stopping"
PROTOCOL_REFUSED = "margin.refused"  # the lifespan state's counter of refusals (`margin.app.Gateway.refused`)
REASONS = {400: "invalid_http", 408: "request_timeout", 431: "headers_too_large", 503: "too_many_connections"}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection may hold (`server.*`; margin.serve)."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 4096
    write_timeout_s: float = 32.0


class AskedFlow(FlowControl):
    """uvicorn's flow control, which also tells the protocol when the app asks for more of a body whose
    deadline is armed (uvicorn resumes reading then, and sends a `100 Continue` just before). Inlined, not
    `super()`: this runs twice a request."""

    def __init__(self, transport: asyncio.Transport, protocol: BoundedHttpToolsProtocol) -> None:
        super().__init__(transport)
        self.protocol = protocol

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()
        if self.protocol.deadline_for == BODY:
            self.protocol.asked()


class Coalescing:
    """The connection's transport as uvicorn's protocol sees it, except that a response's head (status line and
    headers, one write that starts with `HTTP/`) is held until the next write or the end of this event-loop
    step, whichever comes first. A whole answer's body is written in the same step as its head (uvicorn's
    `send` does not suspend), so head and body leave in one system call and one TCP segment instead of two:
    ~16 µs less CPU a request, and the client is woken once (benchmarks/README.md). A stream's head leaves
    at the end of the step, before its first event. Writes keep their order; a close sends what is held
    first; an abort drops it with the rest of the unsent bytes."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))  # one writev
        elif data[:5] == b"HTTP/":
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's
        return getattr(self._transport, name)


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools where it is (it surfaces as HttpParserCallbackError)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    flow: AskedFlow  # set in connection_made

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: ConnectionLimits = ConnectionLimits(),
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.max_header_bytes = limits.max_header_bytes
        self.deadline: asyncio.TimerHandle | None = None
        self.deadline_for = ""  # HEAD or BODY while armed
        self.write_deadline: asyncio.TimerHandle | None = None  # while the client reads nothing of an answer
        self.read_size = 0  # the read being parsed
        self.reported = False  # a request started, a head ended or body came during it
        self.silent_bytes = 0  # the reads since the last that reported something
        self.in_head = False  # from the start of a request until its head ends
        self.head_reads = 0  # the reads the current head came in

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, Coalescing(transport, self.loop)))
        self.flow = AskedFlow(transport, self)
        if len(self.connections) > self.limits.max_connections:
            self.close_with(503, TOO_MANY, "More than %d connections: 503.", self.limits.max_connections)
            return
        self.arm(HEAD, self.limits.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """uvicorn's, called on every connection as the server begins to stop, with the request running on it
        marked (`STOPPING`): what cancels it after that is the end of the graceful period, not a client."""
        if self.cycle is not None:
            setattr(self.cycle, STOPPING, True)
        super().shutdown()

    def pause_writing(self) -> None:
        """The client stopped reading and the answer's unsent bytes passed the transport's high-water mark."""
        super().pause_writing()
        if self.write_deadline is None:
            self.write_deadline = self.loop.call_later(self.limits.write_timeout_s, self.drop)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None

    def drop(self) -> None:
        """The client read nothing for `write_timeout_s`: the connection is aborted and the unsent bytes freed
        (a close would keep them until the client reads). The app's blocked write then returns, its cycle
        marked disconnected."""
        self.write_deadline = None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # linger 0: the close resets the connection, and the kernel drops its unsent bytes too
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_NONE)
        self.logger.warning(
            "A client read nothing of its answer for %.0f s: connection dropped.", self.limits.write_timeout_s
        )
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the bound and the deadlines."""
        self._unset_keepalive_if_required()
        size = self.read_size = len(data)
        self.reported = False
        if self.in_head:
            self.head_reads += size
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, HeadTooLarge):
                self.refuse()
            else:
                self.close_with(400, INVALID, INVALID.decode())  # uvicorn's `send_400_response`, with our headers
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.reported:
            self.silent_bytes = 0
        else:
            self.silent_bytes += size
            if self.silent_bytes > self.max_header_bytes:
                self.refuse()
                return
        self.watch()

    def watch(self) -> None:
        """After each read: a body part-way in re-arms its idle deadline; a head awaited (part-way in, or bytes
        between requests) keeps the deadline armed at its first byte; a request wholly in needs none."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.in_head and not cycle.response_complete:
            self.arm(BODY, self.limits.body_timeout_s)
        elif self.in_head or cycle is None or cycle.response_complete:
            if self.deadline_for != HEAD:
                self.arm(HEAD, self.limits.head_timeout_s)
        elif self.deadline is not None:
            self.disarm()

    def asked(self) -> None:
        """The app asks for more of a body: the client's idle time starts now. Until then the wait was the app's
        (it left the body unread, or had not yet sent `100 Continue`), so a deadline re-armed during it must not
        fall just after, whatever its phase."""
        self.arm(BODY, self.limits.body_timeout_s)

    def arm(self, kind: str, seconds: float) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline, self.deadline_for = self.loop.call_later(seconds, self.expire), kind

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline, self.deadline_for = None, ""

    def expire(self) -> None:
        """A deadline passed. A body the app is not reading (uvicorn paused reading it) or that waits for the
        app's `100 Continue` is not the client's delay: its deadline starts again."""
        kind, self.deadline, self.deadline_for = self.deadline_for, None, ""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if kind == BODY and cycle is not None and (self.flow.read_paused or cycle.waiting_for_100_continue):
            self.arm(BODY, self.limits.body_timeout_s)
            return
        if kind == HEAD and not self.in_head and not self.silent_bytes:
            self.transport.close()  # nothing of a request came: nothing to answer
            return
        self.close_with(408, TIMED_OUT, "A request's %s did not arrive in time: 408.", kind)

    def refuse(self) -> None:
        self.close_with(431, TOO_LARGE, "Header section over %d bytes: 431.", self.max_header_bytes)

    def close_with(self, status: int, text: bytes, warning: str = "", *args: object) -> None:
        """Answer `status` and close, like uvicorn's `send_400_response`: the rest of the request is never read.
        Only where no answer is under way on the connection (a pipelined request's may be: then it is cut off
        instead); a request whose app runs (its trailers were refused, its body stalled) sees a disconnect.
        `warning`: logged (`args` its values) with the answer's request id; the refusal is counted where answered."""
        request_id = new_request_id()
        if warning:
            self.logger.warning("%s (request %s)", warning % args, request_id)
        self.disarm()
        cycle = self.cycle
        answer = cycle is None or cycle.response_complete or not (self.in_head or cycle.response_started)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:  # counted only when answered: a cut-off connection's request has its own outcome
            if (refused := self.app_state.get(PROTOCOL_REFUSED)) is not None:
                refused(REASONS.get(status))
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            own = "".join(f"{name}: {text}\r\n" for name, text in unspent_headers(request_id, None).items())
            content.append(own.encode())
            content.extend(
                [
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(text),
                    b"connection: close\r\n",
                    b"\r\n",
                    text,
                ]
            )
            self.transport.write(b"".join(content))
        self.transport.close()

    def head_bytes(self) -> int:
        """The current head's URL and header lines (values without trailing whitespace: at most their size)."""
        return len(self.url) + sum(len(name) + len(value) + LINE_FRAMING for name, value in self.headers)

    # Parser callbacks
    def on_message_begin(self) -> None:
        self.reported, self.in_head, self.head_reads = True, True, self.read_size
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self.reported = True
        if self.head_reads > self.max_header_bytes and self.head_bytes() > self.max_header_bytes:
            raise HeadTooLarge
        self.in_head = False
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        self.reported = True
        HttpToolsProtocol.on_body(self, body)
