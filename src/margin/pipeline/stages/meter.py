"""meter: tokens (from the backend, else counted with the model's tokenizer, else estimated), latency,
and the request's cost, energy and carbon from `margin.economics`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from margin.backends.base import Usage
from margin.backends.payloads import prompt_text
from margin.economics.meter import Meter, discounted
from margin.economics.money import to_nanousd
from margin.economics.rates import tokens_per_s
from margin.governance.admission import worst_case_usd
from margin.governance.specs import AdmissionConfig
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext, Target
from margin.routing.policy import strongest


def estimate_tokens(text: str) -> int:
    """~4 characters a token (English BPE); only used when neither backend nor tokenizer can say."""
    return max(1, round(len(text) / 4)) if text else 0


def resolve_usage(ctx: RequestContext) -> Usage:
    call, target = ctx.call, ctx.target
    if call is None or target is None:
        return Usage(source="none")
    if call.stats.usage is not None:
        return call.stats.usage
    output = "".join(ctx.delivered_text) if ctx.stream is not None else (ctx.completion.text if ctx.completion else "")
    prompt = prompt_text(call)
    counted_in, counted_out = target.backend.count_tokens(prompt), target.backend.count_tokens(output)
    if counted_in is not None and counted_out is not None:
        return Usage(counted_in, counted_out, source="tokenizer")
    return Usage(estimate_tokens(prompt), estimate_tokens(output), source="estimated")


class MeterStage(BaseStage):
    name = "meter"

    def __init__(
        self, meter: Meter, strong: Callable[[RequestContext], Target | None], admission: AdmissionConfig
    ) -> None:
        self.meter = meter
        self.strong = strong
        self.admission = admission

    async def on_response(self, ctx: RequestContext) -> None:
        if ctx.e2e_s is None:
            ctx.e2e_s = time.perf_counter() - ctx.started
        ctx.usage = resolve_usage(ctx)
        if ctx.target is None or ctx.call is None or ctx.cache_hit is not None:  # a cache hit costs nothing
            return
        stats_busy = ctx.call.stats.busy_s
        busy = stats_busy if stats_busy is not None else (ctx.busy_share_s or 0.0)
        ctx.charge = self.meter.charge(ctx.target.public, ctx.target.model, ctx.usage, busy, ctx.measured_j)
        if ctx.preference is not None:
            self._default(ctx, ctx.usage, busy)
        elif ctx.route is not None:
            self._counterfactual(ctx, ctx.usage)
        if ctx.batch is not None:
            ctx.charge = discounted(ctx.charge, ctx.batch.discount)

    def _counterfactual(self, ctx: RequestContext, usage: Usage) -> None:
        """What the route's strongest model would have cost for the same tokens (routing's saving)."""
        strong = self.strong(ctx)
        if strong is not None:
            cost = worst_case_usd(self.meter, [strong], usage.input_tokens, usage.output_tokens, self.admission)
            ctx.counterfactual_nanousd = None if cost is None else to_nanousd(cost)

    def _default(self, ctx: RequestContext, usage: Usage, busy: float) -> None:
        """What the route's default deployment would have cost and emitted for the same tokens, now (its busy
        time scaled by the two backends' configured throughputs)."""
        assert ctx.preference is not None and ctx.target is not None and ctx.charge is not None
        default = ctx.preference.default
        charge = ctx.charge
        if default.backend_name != ctx.target.backend_name:
            fallback = self.admission.reserve_tokens_per_s
            scale = tokens_per_s(self.meter, ctx.target.backend_name, fallback) / tokens_per_s(
                self.meter, default.backend_name, fallback
            )
            charge = self.meter.charge(default.public, default.model, usage, busy * scale)
        if ctx.batch is not None:
            charge = discounted(charge, ctx.batch.discount)
        ctx.preference.default_cost_nanousd = None if charge.cost_usd is None else to_nanousd(charge.cost_usd)
        ctx.preference.default_co2e_g = charge.co2e_g


def build(services: Any) -> MeterStage:
    settings = services.settings

    def strong(ctx: RequestContext) -> Target | None:
        return strongest(ctx, settings.routes, services.targets)

    return MeterStage(services.meter, strong, settings.admission)


STAGE = StageSpec("meter", 800, build)
