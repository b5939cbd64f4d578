"""Stage discovery and the pipeline's guarantees."""

from __future__ import annotations

from pathlib import Path

import pytest

from margin.backends.base import Completion
from margin.errors import InternalError, InvalidRequest
from margin.pipeline.base import BaseStage, Pipeline
from margin.pipeline.context import RequestContext
from margin.pipeline.stages import discover
from margin.protocol import ChatCompletionRequest, ChatMessage, Endpoint
from tests.helpers import fake_settings, gateway


def test_stages_are_discovered_in_design_order() -> None:
    names = [spec.name for spec in discover()]
    assert names == ["auth", "admit", "guard", "cache", "route", "meter", "cache_fill", "settle"]
    orders = [spec.order for spec in discover()]
    assert orders == sorted(orders)


class Recorder(BaseStage):
    def __init__(self, name: str, log: list[str], fail: bool = False, answer: bool = False) -> None:
        self.name, self.log, self.fail, self.answer = name, log, fail, answer

    async def on_request(self, ctx: RequestContext) -> None:
        self.log.append(f"{self.name}.request")
        if self.fail:
            raise InvalidRequest("no")
        if self.answer:
            ctx.completion = Completion(payload={"cached": True})

    async def on_response(self, ctx: RequestContext) -> None:
        self.log.append(f"{self.name}.response:{ctx.status}")


def context() -> RequestContext:
    request = ChatCompletionRequest(model="m", messages=[ChatMessage(role="user", content="x")])
    return RequestContext("r", Endpoint.CHAT, {}, {}, request)


async def test_every_stage_sees_the_response_even_after_a_rejection() -> None:
    log: list[str] = []
    calls: list[str] = []

    async def call(ctx: RequestContext) -> None:
        calls.append("called")

    pipeline = Pipeline([Recorder("a", log), Recorder("b", log, fail=True), Recorder("c", log)], call)
    ctx = context()
    with pytest.raises(InvalidRequest):
        await pipeline.run(ctx)
    assert log == ["a.request", "b.request", "a.response:error", "b.response:error", "c.response:error"]
    assert calls == [] and ctx.http_status == 400
    await pipeline.finish(ctx)  # a second finish is a no-op
    assert len(log) == 5


async def test_a_stage_can_answer_and_skip_the_backend() -> None:
    log: list[str] = []

    async def call(ctx: RequestContext) -> None:
        raise AssertionError("the backend must not be called")

    pipeline = Pipeline([Recorder("cache", log, answer=True), Recorder("late", log)], call)
    ctx = context()
    await pipeline.run(ctx)
    assert ctx.completion is not None and log == ["cache.request", "cache.response:ok", "late.response:ok"]


async def test_unexpected_error_becomes_500_and_is_still_settled() -> None:
    log: list[str] = []

    async def call(ctx: RequestContext) -> None:
        raise RuntimeError("bug")

    ctx = context()
    with pytest.raises(InternalError):
        await Pipeline([Recorder("settle", log)], call).run(ctx)
    assert ctx.http_status == 500 and log[-1] == "settle.response:error"


async def test_health_and_ready(db_path: Path) -> None:
    async with gateway(fake_settings(db_path)) as gw:
        health = (await gw.http.get("/healthz")).json()
        assert health["status"] == "ok" and health["open_mode"] is True
        assert set(health["backends"]) == {"fake", "api"}
        assert (await gw.http.get("/readyz")).status_code == 200
