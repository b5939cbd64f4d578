"""admit: feature flags and kill switches, the caller's policy and residency, rate limits (RPM/TPM, GCRA),
and the budget reservation of the request's worst-case cost. The reservation is settled by `settle`
whatever happens to the request afterwards."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from margin.backends.payloads import request_text
from margin.config import RouteConfig
from margin.economics.meter import Meter
from margin.economics.money import from_nanousd, to_nanousd, usd_str
from margin.errors import BudgetExceeded, FeatureDisabled, PermissionDenied, RateLimited, ResidencyUnavailable
from margin.governance import admission as adm
from margin.governance.rules import Rules, Subject
from margin.governance.service import Governance
from margin.governance.specs import BudgetSpec, FlagSpec, LimitSpec
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext, Target
from margin.pipeline.stages.route import resolve
from margin.protocol import Endpoint

CHAT_MESSAGE_OVERHEAD = 8  # template tokens per message, on top of the counted text (upper bound)


def _subject(ctx: RequestContext, target: Target) -> Subject:
    p = ctx.principal
    return Subject(
        p.key_id if p else None,
        p.team if p else None,
        p.org if p else None,
        ctx.tags,
        target.public,
        target.backend_name,
    )


def _cap_output(ctx: RequestContext, cap: int) -> None:
    current = getattr(ctx.request, "output_limit", None)
    if current is not None and current <= cap:
        return
    field = "max_completion_tokens" if getattr(ctx.request, "max_completion_tokens", None) else "max_tokens"
    ctx.request = ctx.request.model_copy(update={field: cap})
    ctx.raw = {**ctx.raw, field: cap}


class AdmitStage(BaseStage):
    name = "admit"

    def __init__(
        self, governance: Governance, targets: dict[str, Target], meter: Meter, routes: dict[str, RouteConfig]
    ) -> None:
        self.gov = governance
        self.targets = targets
        self.meter = meter
        self.routes = routes

    async def on_request(self, ctx: RequestContext) -> None:
        rules = self.gov.rules
        ladder = self._ladder(ctx)
        primary = ladder[-1] if ladder else resolve(self.targets, ctx.requested_model, ctx.endpoint)
        target = self._apply_flags(ctx, rules, primary)
        if ladder and target is not primary:  # a flag forced another model: no routing
            ctx.route, ladder = None, []
        subject = _subject(ctx, target)
        ctx.policy = rules.policy_for(subject, ctx.principal.policy if ctx.principal else None)
        self._candidates(ctx, ladder or self._chain(target))
        limits, budgets = rules.limits_for(subject), rules.budgets_for(subject)
        if limits or budgets:
            await self._admit(ctx, limits, budgets, self._prompt_tokens(ctx, target))

    def _apply_flags(self, ctx: RequestContext, rules: Rules, target: Target) -> Target:
        flags = rules.flags_for(_subject(ctx, target))
        forced = next((f for f in flags if f.action == "force_model"), None)
        if forced is not None and forced.model:
            target = resolve(self.targets, forced.model, ctx.endpoint)
            ctx.notices["x-margin-flag"] = forced.name
            flags = rules.flags_for(_subject(ctx, target))
        for flag in flags:
            self._apply_flag(ctx, flag)
        return target

    @staticmethod
    def _apply_flag(ctx: RequestContext, flag: FlagSpec) -> None:
        if flag.action == "disable":
            reason = f": {flag.reason}" if flag.reason else ""
            raise FeatureDisabled(f"disabled by flag `{flag.name}` ({flag.target.label()}){reason}")
        if flag.action == "cap_max_tokens" and flag.max_tokens:
            _cap_output(ctx, flag.max_tokens)
        if flag.action == "require_cache":
            ctx.require_cache = flag.name

    def _ladder(self, ctx: RequestContext) -> list[Target]:
        """A routed name (`routes:` in the config): its models, cheap → strong; the router picks later."""
        route = self.routes.get(ctx.requested_model)
        if route is None:
            return []
        ctx.route = ctx.requested_model
        return [resolve(self.targets, name, ctx.endpoint) for name in route.ladder]

    def _chain(self, target: Target) -> list[Target]:
        return [target] + [self.targets[name] for name in target.model.fallbacks if name != target.public]

    def _candidates(self, ctx: RequestContext, chain: list[Target]) -> None:
        allowed = ctx.policy.jurisdictions if ctx.policy is not None else None
        if allowed is None:
            ctx.candidates = chain
            return
        ctx.candidates = [t for t in chain if t.jurisdiction in allowed]
        ctx.residency_filtered = len(ctx.candidates) < len(chain)
        if not ctx.candidates:
            where = ", ".join(f"{t.public}@{t.region} ({t.jurisdiction or 'no jurisdiction'})" for t in chain)
            raise ResidencyUnavailable(
                f"`{ctx.requested_model}` is only served outside the allowed jurisdictions {allowed}: {where}"
            )

    def _prompt_tokens(self, ctx: RequestContext, target: Target) -> int:
        text = request_text(ctx.request)
        counted = target.backend.count_tokens(text)
        tokens = counted if counted is not None else adm.conservative_tokens(text)
        messages = getattr(ctx.request, "messages", None)
        return tokens + (CHAT_MESSAGE_OVERHEAD * len(messages) if messages else 0)

    async def _admit(
        self, ctx: RequestContext, limits: list[LimitSpec], budgets: list[BudgetSpec], prompt_tokens: int
    ) -> None:
        """Rate limits and budget reservation in one atomic step (one Redis round trip)."""
        checks, lenient, tpm_labels = adm.rate_checks(limits, prompt_tokens)
        holds = await self._holds(ctx, budgets, prompt_tokens) if budgets else []
        ttl = self.gov.settings.admission.reservation_ttl_s
        result = await self.gov.store.admit(ctx.request_id, [h.hold for h in holds], ttl, checks, lenient)
        if result.wait > 0:
            labels = ", ".join(f"{limit.scope.label()} (rpm {limit.rpm}, tpm {limit.tpm})" for limit in limits)
            raise RateLimited(
                f"rate limit reached for {labels}; retry in {result.wait:.1f}s",
                headers={"retry-after": str(max(1, round(result.wait + 0.5)))},
            )
        if result.failed is not None:
            raise self._exceeded(holds[result.failed], result.counters[result.failed])
        by_label = {limit.scope.label(): limit for limit in limits}
        tpm_keys = [(f"tpm:{label}", 60.0 / (by_label[label].tpm or 1)) for label in tpm_labels]
        ctx.admission = adm.Admission(ctx.request_id, holds, tpm_keys)
        self._warn(ctx, holds, result.counters)

    async def _holds(self, ctx: RequestContext, budgets: list[BudgetSpec], prompt_tokens: int) -> list[adm.BudgetHold]:
        config = self.gov.settings.admission
        target = ctx.candidates[0]
        output = 0
        if ctx.endpoint is not Endpoint.EMBEDDINGS:
            output = adm.output_allowance(
                getattr(ctx.request, "output_limit", None),
                target.model.context_length,
                prompt_tokens,
                config.default_max_output_tokens,
            )
        worst = adm.worst_case_usd(self.meter, ctx.candidates, prompt_tokens, output, config)
        if worst is None and config.unknown_price == "reject" and any(b.usd and b.mode == "hard" for b in budgets):
            raise PermissionDenied(
                f"`{target.public}` has no known price, so hard USD budgets cannot admit it "
                "(set a price in the config, or admission.unknown_price: allow)",
                code="price_unknown",
            )
        now = datetime.now(UTC)
        worst_nano = to_nanousd(worst) if worst is not None else 0
        holds = [adm.hold_for(b, now, worst_nano, prompt_tokens + output) for b in budgets]
        await self.gov.seed(holds, now)
        return holds

    @staticmethod
    def _exceeded(item: adm.BudgetHold, counter: tuple[int, int]) -> BudgetExceeded:
        budget, hold = item.budget, item.hold
        spent, reserved = counter

        def fmt(amount: int) -> str:
            return f"${usd_str(from_nanousd(amount))}" if budget.usd is not None else f"{amount} tokens"

        limit = f"${budget.usd}" if budget.usd is not None else f"{budget.tokens} tokens"
        headers = {}
        if item.resets_at is not None:
            seconds = int((item.resets_at - datetime.now(UTC)).total_seconds()) + 1
            headers["retry-after"] = str(max(1, seconds))
        return BudgetExceeded(
            f"budget `{budget.name}` ({budget.scope.label()}, {limit} per {budget.period}) would be exceeded: "
            f"spent {fmt(spent)}, reserved by requests in flight {fmt(reserved)}, this request may cost up to "
            f"{fmt(hold.amount)}; {adm.reset_text(item.resets_at)}",
            headers=headers,
        )

    @staticmethod
    def _warn(ctx: RequestContext, holds: list[adm.BudgetHold], counters: tuple[tuple[int, int], ...]) -> None:
        for item, (spent, reserved) in zip(holds, counters, strict=True):
            if item.hold.limit and 100 * (spent + reserved) >= item.budget.alert_pct * item.hold.limit:
                share = 100 * (spent + reserved) / item.hold.limit
                ctx.notices["x-margin-budget-warning"] = f"{item.budget.name}={share:.0f}%"


def build(services: Any) -> AdmitStage:
    return AdmitStage(services.governance, services.targets, services.meter, services.settings.routes)


STAGE = StageSpec("admit", 200, build)
