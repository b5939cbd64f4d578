"""The circuit breaker counts backend faults only: a caller's bad input, a full queue, or an exception its
input provoked inside an in-process engine never take a backend down for every tenant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from margin.backends.fake import FakeBackend
from margin.errors import BackendError, InvalidRequest, MarginError, Overloaded
from margin.pipeline.steps.call import backend_fault
from tests.helpers import fake_settings, gateway

CHAT = "/v1/chat/completions"
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


class Scripted(FakeBackend):
    """The fake backend, raising what the test sets (then answering normally once it is cleared)."""

    error: Exception | None = None

    async def complete(self, call: Any) -> Any:
        if self.error is not None:
            raise self.error
        return await super().complete(call)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Overloaded("queue full"), 503),
        (IndexError("index 99999 is out of bounds"), 502),  # what a bad token id did inside llama.cpp
        (InvalidRequest("bad schema"), 400),
    ],
    ids=["queue-full", "engine-exception", "client-error"],
)
async def test_client_provoked_failures_never_open_the_circuit(db_path: Path, error: Exception, status: int) -> None:
    settings = fake_settings(db_path, admission={"breaker_failures": 2})
    async with gateway(settings) as gw:
        backend = gw.services.backends["fake"]
        backend.__class__ = Scripted
        backend.error = error  # type: ignore[attr-defined]
        for _ in range(5):
            assert (await gw.http.post(CHAT, json=BODY)).status_code == status
        assert gw.services.breakers.available("fake")
        backend.error = None  # type: ignore[attr-defined]
        assert (await gw.http.post(CHAT, json=BODY)).status_code == 200


async def test_backend_faults_still_open_it(db_path: Path) -> None:
    settings = fake_settings(db_path, admission={"breaker_failures": 2})
    async with gateway(settings) as gw:
        backend = gw.services.backends["fake"]
        backend.__class__ = Scripted
        backend.error = BackendError("upstream answered 500")  # type: ignore[attr-defined]
        for _ in range(2):
            assert (await gw.http.post(CHAT, json=BODY)).status_code == 502
        assert not gw.services.breakers.available("fake")
        reply = await gw.http.post(CHAT, json=BODY)
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "backend_unavailable"


def test_what_counts_as_a_fault() -> None:
    faults: list[MarginError] = [BackendError("5xx")]
    others: list[MarginError] = [Overloaded("full"), InvalidRequest("bad")]
    assert all(backend_fault(e) for e in faults) and not any(backend_fault(e) for e in others)
