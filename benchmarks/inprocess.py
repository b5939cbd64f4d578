"""The request path in this process, without HTTP (for benchmarks of margin's own work): one request through
`services.flow` as the open-mode (anonymous) caller, the answer collected in memory."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from margin.api.errors import error_body, status_of
from margin.errors import MarginError
from margin.parsing import parse_request
from margin.pipeline.values import Record, Request
from margin.protocol import Endpoint
from margin.types import ANONYMOUS


class Collected:
    """A `margin.pipeline.values.Client` that keeps what the flow wrote."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.stopping = False  # no server to stop

    def status_of(self, error: MarginError) -> int:
        return status_of(error)

    def error_event(self, error: MarginError) -> bytes:
        import orjson

        return orjson.dumps(error_body(error))

    async def answer(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.status, self.body = 200, body

    async def refuse(self, error: MarginError, headers: Mapping[str, str]) -> None:
        self.status = status_of(error)

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        self.status = 200

    async def write(self, data: bytes) -> None:
        self.body += data

    async def end_stream(self, data: bytes) -> None:
        self.body += data


async def call(services: Any, data: dict[str, Any], endpoint: Endpoint = Endpoint.CHAT) -> Collected:
    started = time.perf_counter()
    body = parse_request(endpoint, data)
    request_id = uuid.uuid4().hex
    stream = bool(getattr(body, "stream", False))
    record = Record(request_id, endpoint, body.model, stream, started=started, principal=ANONYMOUS)
    client = Collected()
    await services.flow(Request(request_id, endpoint, {}, data, body, ANONYMOUS, client, record, started))
    return client
