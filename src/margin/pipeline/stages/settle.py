"""settle: the request's ledger row, handed to the batched, idempotent writer, and its budget
reservation settled to the same cost. Every authenticated request gets exactly one row (kind `request`),
whatever its outcome."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from margin.economics.money import to_nanousd
from margin.governance.service import Governance
from margin.guard.pseudonym import UserPseudonyms
from margin.guard.redaction import restore
from margin.ledger.store import LedgerWriter
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext
from margin.pipeline.stages.admit import LEDGER_BACKLOG


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _nanousd(ctx: RequestContext) -> int | None:
    """0 when no backend was called; NULL (never 0) when a backend was called at an unknown price."""
    if ctx.charge is None:
        return 0
    return None if ctx.charge.cost_usd is None else to_nanousd(ctx.charge.cost_usd)


def _storable(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: a logged prompt keeps everything else."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def caller_user(ctx: RequestContext) -> str | None:
    """The OpenAI `user` the caller sent (its original value, also when the guard redacted it upstream)."""
    user = getattr(ctx.request, "user", None)
    if isinstance(user, str) and ctx.guard_state is not None:
        return restore(user, ctx.guard_state)
    return user if isinstance(user, str) else None


def _levers(ctx: RequestContext) -> dict[str, Any]:
    """Batch lines (id, discount) and lowest-carbon/lowest-cost routes (default and its counterfactual)."""
    discount = ctx.charge.discount_usd if ctx.charge else None
    preference = ctx.preference
    return {
        "batch_id": ctx.batch.batch_id if ctx.batch else None,
        "discount_nanousd": None if discount is None else to_nanousd(discount),
        "route_pref": preference.objective if preference else None,
        "route_default": preference.default.public if preference else None,
        "default_cost_nanousd": preference.default_cost_nanousd if preference else None,
        "default_co2e_g": preference.default_co2e_g if preference else None,
    }


def ledger_row(ctx: RequestContext, config_hash: str, pseudonym: UserPseudonyms | None = None) -> dict[str, Any]:
    principal, target, charge = ctx.principal, ctx.target, ctx.charge
    usage = ctx.usage
    stats = ctx.call.stats if ctx.call else None
    return {
        "request_id": ctx.request_id,
        "kind": "cache_hit" if ctx.cache_hit else "request",
        "created_at": ctx.started_at,
        "key_id": principal.key_id if principal else None,
        "team": principal.team if principal else None,
        "org": principal.org if principal else None,
        "user": (pseudonym or UserPseudonyms())(caller_user(ctx)),  # never the raw value
        "tags": ctx.tags,
        "endpoint": str(ctx.endpoint),
        "model": target.public if target else None,
        "requested_model": ctx.requested_model,
        "backend": target.backend_name if target else None,
        "region": target.region if target else None,
        "jurisdiction": target.jurisdiction if target else None,
        "guard": ctx.guard,
        "prompt_text": _storable(ctx.prompt_log),
        "status": ctx.status,
        "http_status": ctx.http_status,
        "error_code": ctx.error.code if ctx.error else None,
        "stream": ctx.is_stream,
        "input_tokens": usage.input_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0,
        "cached_tokens": usage.cached_tokens if usage else 0,
        "usage_source": usage.source if usage else None,
        "ttft_ms": _ms(ctx.ttft_s),
        "e2e_ms": _ms(ctx.e2e_s) or 0.0,
        "overhead_ms": round(ctx.overhead_ms(), 3),
        "backend_ms": _ms(ctx.backend_wait_s),
        "queue_ms": _ms(stats.queue_s) if stats else None,
        "cost_nanousd": _nanousd(ctx),
        "cost_status": charge.cost_status if charge else "no_charge",
        "cost_method": charge.cost_method if charge else None,
        "price_version": charge.price_version if charge else None,
        "energy_j": charge.energy_j if charge else None,
        "energy_method": charge.energy_method if charge else None,
        "pue": charge.pue if charge else None,
        "co2e_g": charge.co2e_g if charge else None,
        "grid_g_per_kwh": charge.grid_g_per_kwh if charge else None,
        "grid_source": charge.grid_source if charge else None,
        "config_hash": config_hash,
        "cache": ctx.cache_hit["type"] if ctx.cache_hit else None,
        "saved_nanousd": ctx.cache_hit["saved_nanousd"] if ctx.cache_hit else None,
        "router_score": ctx.router_score,
        "counterfactual_nanousd": ctx.counterfactual_nanousd,
        "busy_ms": _ms(charge.busy_s) if charge else None,
        **_levers(ctx),
    }


class SettleStage(BaseStage):
    name = "settle"

    def __init__(
        self,
        writer: LedgerWriter,
        config_hash: str,
        governance: Governance | None = None,
        spawn: Callable[[Coroutine[Any, Any, Any]], None] | None = None,
        pseudonym: UserPseudonyms | None = None,
    ) -> None:
        self.writer = writer
        self.pseudonym = pseudonym or UserPseudonyms()
        self.config_hash = config_hash
        self.governance = governance
        self.spawn = spawn

    async def on_response(self, ctx: RequestContext) -> None:
        if ctx.principal is None:  # rejected before authentication: nobody to attribute it to
            return
        if ctx.error is not None and ctx.error.code == LEDGER_BACKLOG:  # refused before any work: no row, so a
            self.writer.refused += 1  # ledger that is down cannot grow the queue without bound
            return
        row = ledger_row(ctx, self.config_hash, self.pseudonym)
        self.writer.submit(row)
        admission = ctx.admission
        if self.governance is not None and admission is not None:
            # the answer does not wait for the budget store: the reservation holds until this lands
            # a cache hit used no model tokens: like the ledger reconciliation (kind `request` only), count none
            tokens = (0, 0) if ctx.cache_hit else (row["input_tokens"], row["output_tokens"])
            target, caller = ctx.target, admission.subject
            served = caller.serving(target.public, target.backend_name) if target and caller else None
            settling = self.governance.settle(admission, row["cost_nanousd"], tokens[0], tokens[1], served)
            if self.spawn is not None:
                self.spawn(settling)
            else:
                await settling


def build(services: Any) -> SettleStage:
    pseudonym = UserPseudonyms.from_env(services.settings.guard.user_hash_key_env)
    return SettleStage(services.writer, services.config_hash, services.governance, services.spawn, pseudonym)


STAGE = StageSpec("settle", 900, build)
