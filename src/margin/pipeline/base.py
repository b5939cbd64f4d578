"""Stages and the pipeline that runs them.

A stage is a small object with two hooks. `on_request` runs in order before the backend call and may
raise a MarginError (rejecting the request) or answer it itself by setting `ctx.completion`/`ctx.stream`
(a cache hit, say), which skips the later stages' `on_request` and the backend. `on_response` runs for
every stage, in the same order, once the request is over: after a whole answer, at the end of a stream
(also when the client left or the upstream broke off), and after a rejection. So metering and settling are
just the last stages, and every outcome reaches them.

Adding a stage is one file in `margin/pipeline/stages/` that defines `STAGE = StageSpec(...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from margin.errors import InternalError, MarginError
from margin.ledger.outbox import OutboxError
from margin.pipeline.context import RequestContext

log = logging.getLogger("margin.pipeline")


class Stage(Protocol):
    name: str

    async def on_request(self, ctx: RequestContext) -> None: ...

    async def on_response(self, ctx: RequestContext) -> None: ...


class BaseStage:
    name = "stage"

    async def on_request(self, ctx: RequestContext) -> None:
        return None

    async def on_response(self, ctx: RequestContext) -> None:
        return None


@dataclass(frozen=True, slots=True)
class StageSpec:
    name: str
    order: int  # auth 100, admit 200, guard 300, cache 400, route 500, meter 800, settle 900
    build: Callable[[Any], Stage | None]  # takes the Services; None leaves the stage out


class Pipeline:
    def __init__(self, stages: list[Stage], call: Callable[[RequestContext], Awaitable[None]]) -> None:
        self.stages = stages
        self._call = call

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    async def run(self, ctx: RequestContext) -> None:
        """Run the request side and the backend call. A whole answer is finished here; a stream is
        finished by whoever drains it (`finish` must be awaited when the stream ends)."""
        try:
            for stage in self.stages:
                await stage.on_request(ctx)
                if ctx.completion is not None or ctx.stream is not None:
                    break
            else:
                await self._call(ctx)
        except MarginError as exc:
            ctx.fail(exc)
            await self.finish(ctx)
            raise
        except Exception as exc:
            log.exception("request %s failed inside margin", ctx.request_id)
            error = InternalError(f"internal error in the gateway (request {ctx.request_id})")
            ctx.fail(error)
            await self.finish(ctx)
            raise error from exc
        if ctx.stream is None:
            await self.finish(ctx)

    async def finish(self, ctx: RequestContext) -> None:
        """Every stage's `on_response`. Raises OutboxError (after the other stages ran) when the request's row
        could not be recorded: the answer must then not be acknowledged."""
        if ctx.finished:
            return
        ctx.finished = True
        unrecorded: OutboxError | None = None
        for stage in self.stages:
            try:
                await stage.on_response(ctx)
            except OutboxError as exc:
                unrecorded = exc
            except Exception:
                log.exception("stage %s failed while finishing request %s", stage.name, ctx.request_id)
        if unrecorded is not None:
            raise unrecorded
