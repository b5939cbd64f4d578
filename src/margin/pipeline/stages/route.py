"""route: the requested model (public id or alias) → model config and backend. Policies such as
cheapest-adequate, residency and fallback extend this stage."""

from __future__ import annotations

from typing import Any

from margin.errors import InvalidRequest, ModelNotFound
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext, Target
from margin.protocol import Endpoint


class RouteStage(BaseStage):
    name = "route"

    def __init__(self, targets: dict[str, Target]) -> None:
        self.targets = targets

    async def on_request(self, ctx: RequestContext) -> None:
        target = self.targets.get(ctx.requested_model)
        if target is None:
            raise ModelNotFound(
                f"The model `{ctx.requested_model}` does not exist or you do not have access to it.",
                param="model",
            )
        wants_embedding = ctx.endpoint is Endpoint.EMBEDDINGS
        if wants_embedding != (target.model.kind == "embedding"):
            kind = "an embedding" if target.model.kind == "embedding" else "a text generation"
            raise InvalidRequest(
                f"model `{target.public}` is {kind} model; it cannot serve /v1/{ctx.endpoint}",
                param="model",
                code="wrong_model_kind",
            )
        ctx.target = target


def build(services: Any) -> RouteStage:
    return RouteStage(services.targets)


STAGE = StageSpec("route", 500, build)
