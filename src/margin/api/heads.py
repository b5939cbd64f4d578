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

The limit reaches the protocol through uvicorn's own option for the same bound in its h11 protocol,
`h11_max_incomplete_event_size` (`margin.serve`): a plain field of `uvicorn.Config`, which is what the worker
processes of `--workers N` receive, so this class needs nothing but its import path."""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
LINE_FRAMING = len(b": \r\n")  # the least a header line adds to its name and value
TOO_LARGE = b"Request header fields too large."


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools where it is (it surfaces as HttpParserCallbackError)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_header_bytes = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        self.read_size = 0  # the read being parsed
        self.reported = False  # a request started, a head ended or body came during it
        self.silent_bytes = 0  # the reads since the last that reported something
        self.in_head = False  # from the start of a request until its head ends
        self.head_reads = 0  # the reads the current head came in

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the bound."""
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
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
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

    def refuse(self) -> None:
        """431 and close, like uvicorn's `send_400_response`: the rest of the section is never read. Only where
        no answer is under way on the connection (a pipelined request's may be: then it is cut off instead); a
        request whose app runs (its trailers were refused) sees a disconnect."""
        self.logger.warning("Header section over %d bytes: 431.", self.max_header_bytes)
        cycle = self.cycle
        answer = cycle is None or cycle.response_complete or not (self.in_head or cycle.response_started)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            content = [STATUS_LINE[431]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(TOO_LARGE),
                    b"connection: close\r\n",
                    b"\r\n",
                    TOO_LARGE,
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
