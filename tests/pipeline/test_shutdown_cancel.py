"""A request the server cancels as its graceful period after SIGTERM ends (`server.shutdown_grace_s`) is told so
(503 `server_shutting_down`), and its row records that answer, not 499 `cancelled`. The server's cancellation is
recognised by margin's own mark (`Client.stopping`: margin's HTTP protocol marks the request as uvicorn begins to
stop), no longer by uvicorn's message text: a cancellation with that text while the server is not stopping is
not a shutdown, and one without it while the server stops is."""

from __future__ import annotations

import asyncio

import pytest

from margin.pipeline.values import Reply, Request
from tests.pipeline.test_flow import Client, Outbox, flow_of, make_request

UVICORN_MESSAGE = "Task cancelled, timeout graceful shutdown exceeded"  # uvicorn 0.55's; any release may change it


async def _cancelled(stopping: bool, message: str | None, stream: bool = False) -> tuple[Client, Outbox]:
    outbox = Outbox()
    waiting = asyncio.Event()

    async def terminal(request: Request) -> Reply:
        waiting.set()
        await asyncio.Event().wait()  # an answer that has not come when the grace ends
        raise AssertionError("unreachable")

    client = Client(outbox.rows)
    running = asyncio.create_task(flow_of(outbox, [], terminal)(make_request(client, stream=stream)))
    await waiting.wait()
    client.stopping = stopping
    running.cancel(msg=message)
    with pytest.raises(asyncio.CancelledError):
        await running
    return client, outbox


@pytest.mark.parametrize("stream", [False, True])
async def test_the_servers_cancellation_is_answered_503_and_recorded_so(stream: bool) -> None:
    client, outbox = await _cancelled(stopping=True, message=None, stream=stream)
    assert client.log == [("refuse", 503, 1)]  # before: nothing (no uvicorn message), the connection cut
    row = outbox.rows[0]
    # before: 499 `cancelled`, while the client was answered 503
    assert (row["status"], row["http_status"], row["error_code"]) == ("cancelled", 503, "server_shutting_down")


async def test_uvicorns_message_alone_is_not_a_shutdown() -> None:
    """A cancellation of another cause (a batch worker's grace, a later uvicorn) that carries the text."""
    client, outbox = await _cancelled(stopping=False, message=UVICORN_MESSAGE)
    assert client.log == []  # before: answered 503 `server_shutting_down`
    row = outbox.rows[0]
    assert (row["status"], row["http_status"], row["error_code"]) == ("cancelled", 499, "cancelled")
