"""route: the requested model (public id or alias) → its model config and backend (`resolve`, used by
admit, which also narrows the candidates by flags and residency), then the order in which candidates are
tried: the target first, then its fallbacks, skipping backends whose circuit is open."""

from __future__ import annotations

from typing import Any

from margin.errors import FeatureDisabled, InvalidRequest, ModelNotFound, Overloaded, ResidencyUnavailable
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext, Target
from margin.protocol import Endpoint
from margin.routing.breaker import Breakers
from margin.routing.policy import RoutePolicy


def resolve(targets: dict[str, Target], model: str, endpoint: Endpoint) -> Target:
    target = targets.get(model)
    if target is None:
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    wants_embedding = endpoint is Endpoint.EMBEDDINGS
    if wants_embedding != (target.model.kind == "embedding"):
        kind = "an embedding" if target.model.kind == "embedding" else "a text generation"
        raise InvalidRequest(
            f"model `{target.public}` is {kind} model; it cannot serve /v1/{endpoint}",
            param="model",
            code="wrong_model_kind",
        )
    return target


def unavailable(ctx: RequestContext, detail: str) -> Overloaded | ResidencyUnavailable:
    jurisdictions = getattr(ctx.policy, "jurisdictions", None)
    if jurisdictions is not None:
        return ResidencyUnavailable(
            f"no healthy backend in the allowed jurisdictions {jurisdictions} can serve "
            f"`{ctx.requested_model}` ({detail}); the request was not sent elsewhere"
        )
    return Overloaded(f"no healthy backend can serve `{ctx.requested_model}` ({detail})", code="backend_unavailable")


class RouteStage(BaseStage):
    name = "route"

    def __init__(self, breakers: Breakers, policy: RoutePolicy | None = None) -> None:
        self.breakers = breakers
        self.policy = policy

    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.require_cache:
            raise FeatureDisabled(
                f"flag `{ctx.require_cache}` allows only cached answers and this request is not in the cache",
                code="feature_disabled",
            )
        if ctx.route and self.policy is not None:
            await self.policy.choose(ctx)
        healthy = [t for t in ctx.candidates if self.breakers.available(t.backend_name)]
        if not healthy:
            raise unavailable(ctx, "circuit open on " + ", ".join(t.backend_name for t in ctx.candidates))
        if healthy[0] is not ctx.candidates[0]:  # the first choice's circuit is open: the row will say so
            ctx.status, ctx.fault_code = "fallback", "backend_unavailable"
        ctx.candidates = healthy
        ctx.target = healthy[0]


def build(services: Any) -> RouteStage:
    return RouteStage(services.breakers, services.route_policy)


STAGE = StageSpec("route", 500, build)
