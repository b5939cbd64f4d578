"""admit: feature flags and kill switches, the caller's policy and residency, rate limits (RPM/TPM, GCRA),
the per-key stream cap, and the budget reservation of the request's worst-case cost. The reservation is
settled by `settle` whatever happens to the request afterwards.

Rules apply to every model the request may reach (a routed cheap model, fallbacks), not only the one asked
for: a candidate a flag disables is never tried, model budgets of every candidate are reserved, and the
worst case multiplies every field that multiplies work (`n`, `best_of`, prompt lists, token ids)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from margin.backends.payloads import non_text_parts, request_text, token_id_count
from margin.config import RouteConfig
from margin.economics.meter import Meter
from margin.economics.money import from_nanousd, to_nanousd, usd_str
from margin.errors import (
    BudgetExceeded,
    FeatureDisabled,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    RateLimited,
    ResidencyUnavailable,
)
from margin.governance import admission as adm
from margin.governance.rules import Rules, Subject, governed_tags, partition
from margin.governance.service import Governance
from margin.governance.specs import BudgetSpec, FlagSpec, LimitSpec
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext, Target
from margin.pipeline.stages.route import resolve
from margin.protocol import ChatCompletionRequest, EmbeddingRequest, Endpoint

CHAT_MESSAGE_OVERHEAD = 8  # template tokens per message, on top of the counted text (upper bound)
NON_TEXT_PART_TOKENS = 2048  # an image or audio part, priced as a large high-detail image (upper bound)
OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens")
LEDGER_BACKLOG = "ledger_backlog"  # the error code of requests refused because the ledger is behind


def caller(ctx: RequestContext) -> Subject:
    """Who is asking, as the rules see it: key, team, org and only the tags bound to the key."""
    p = ctx.principal
    if p is None:
        return Subject(tags=ctx.tags)
    return Subject(p.key_id, p.team, p.org, governed_tags(ctx.tags, p.tags, p.key_id is not None))


def on_target(subject: Subject, target: Target) -> Subject:
    return subject.serving(target.public, target.backend_name)


def cap_output(ctx: RequestContext, cap: int) -> None:
    """Lower every output-limit field the client sent to `cap` (an upstream may honour either one); with none
    sent, set `max_tokens`."""
    fields = OUTPUT_FIELDS if isinstance(ctx.request, ChatCompletionRequest) else OUTPUT_FIELDS[:1]
    sent = {name: getattr(ctx.request, name) for name in fields if getattr(ctx.request, name) is not None}
    update = {name: cap for name, value in sent.items() if value > cap}
    if not sent:
        update["max_tokens"] = cap
    if update:
        ctx.request = ctx.request.model_copy(update=update)
        ctx.raw = {**ctx.raw, **update}


def _required_tags(ctx: RequestContext) -> None:
    """A key bound to `name=*` fills that tag from the header on every request, so its tag rules always apply."""
    p = ctx.principal
    if p is None or not p.tags:
        return
    missing = [name for name, value in p.tags.items() if value == "*" and name not in ctx.tags]
    if missing:
        raise InvalidRequest(
            f"this key must name its {', '.join(missing)} in x-margin-tags (e.g. {missing[0]}=…)",
            param="x-margin-tags",
            code="missing_tag",
        )


class AdmitStage(BaseStage):
    name = "admit"

    def __init__(
        self,
        governance: Governance,
        targets: dict[str, Target],
        meter: Meter,
        routes: dict[str, RouteConfig],
        outbox: Any = None,
    ) -> None:
        self.gov = governance
        self.targets = targets
        self.meter = meter
        self.routes = routes
        self.outbox = outbox  # ledger.outbox.Outbox: refuse new work while it is full (the ledger is behind)

    async def on_request(self, ctx: RequestContext) -> None:
        if self.outbox is not None and self.outbox.full:
            raise Overloaded(
                "the ledger is behind (its outbox is full); retry shortly",
                code=LEDGER_BACKLOG,
                headers={"retry-after": "1"},
            )
        _required_tags(ctx)
        rules, base = self.gov.rules, caller(ctx)
        ladder = self._ladder(ctx)
        primary = ladder[-1] if ladder else resolve(self.targets, ctx.requested_model, ctx.endpoint)
        target = self._forced(ctx, rules, base, primary)
        if ladder and target is not primary:  # a flag forced another model: no routing
            ctx.route, ladder = None, []
        ctx.policy = rules.policy_for(base, ctx.principal.policy if ctx.principal else None)
        self._candidates(ctx, self._flagged(ctx, rules, base, target, ladder or self._chain(target)))
        self._open_stream(ctx)
        limits, budgets = rules.limits_for(base), self._budgets(rules, base, ctx.candidates)
        if limits or budgets:
            await self._admit(ctx, base, limits, budgets, self._prompt_tokens(ctx, target))

    async def on_response(self, ctx: RequestContext) -> None:
        if ctx.stream_slot is not None:
            self.gov.streams.release(ctx.stream_slot)
            ctx.stream_slot = None

    def _forced(self, ctx: RequestContext, rules: Rules, base: Subject, target: Target) -> Target:
        """A `force_model` flag on the model asked for sends the request to another model."""
        if not rules.flags:
            return target
        forced = next((f for f in rules.flags_for(on_target(base, target)) if f.action == "force_model"), None)
        if forced is None or not forced.model:
            return target
        ctx.notices["x-margin-flag"] = forced.name
        return resolve(self.targets, forced.model, ctx.endpoint)

    def _flagged(
        self, ctx: RequestContext, rules: Rules, base: Subject, primary: Target, chain: list[Target]
    ) -> list[Target]:
        """Flags of every candidate. The primary's apply to the request (disable → 403); another candidate
        that is disabled (or cache-only) is dropped; every candidate's `cap_max_tokens` caps the request."""
        if not rules.flags:
            return chain
        kept = []
        for candidate in chain:
            flags = rules.flags_for(on_target(base, candidate))
            if candidate is primary:
                for flag in flags:
                    self._apply_flag(ctx, flag)
            elif any(f.action in ("disable", "require_cache") for f in flags):
                continue
            else:
                for flag in flags:
                    if flag.action == "cap_max_tokens" and flag.max_tokens:
                        cap_output(ctx, flag.max_tokens)
            kept.append(candidate)
        return kept

    @staticmethod
    def _apply_flag(ctx: RequestContext, flag: FlagSpec) -> None:
        if flag.action == "disable":
            reason = f": {flag.reason}" if flag.reason else ""
            raise FeatureDisabled(f"disabled by flag `{flag.name}` ({flag.target.label()}){reason}")
        if flag.action == "cap_max_tokens" and flag.max_tokens:
            cap_output(ctx, flag.max_tokens)
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

    def _open_stream(self, ctx: RequestContext) -> None:
        """The per-key cap on concurrent streams: the slot is held until the stream ends (`on_response`)."""
        key = ctx.principal.key_id if ctx.principal else None
        if key is None or not ctx.is_stream:
            return
        if not self.gov.streams.acquire(key):
            cap = self.gov.streams.cap
            raise RateLimited(
                f"this key already has {cap} streams open (admission.max_streams_per_key); "
                "finish or close one, then retry",
                code="too_many_streams",
                headers={"retry-after": "1"},
            )
        ctx.stream_slot = key

    @staticmethod
    def _budgets(rules: Rules, base: Subject, candidates: list[Target]) -> list[BudgetSpec]:
        """The budgets of every candidate (a model budget on a fallback is reserved too)."""
        if not rules.budgets:
            return []
        if len(candidates) == 1:
            return rules.budgets_for(on_target(base, candidates[0]))
        found: dict[str, BudgetSpec] = {}
        for candidate in candidates:
            for budget in rules.budgets_for(on_target(base, candidate)):
                found.setdefault(budget.name, budget)
        return list(found.values())

    def _prompt_tokens(self, ctx: RequestContext, target: Target) -> int:
        """An upper bound of the input tokens: counted text, token ids as they are, template overhead per
        message, non-text parts and tool definitions."""
        request = ctx.request
        text = request_text(request)
        counted = target.backend.count_tokens(text)
        tokens = counted if counted is not None else adm.conservative_tokens(text)
        if not isinstance(request, ChatCompletionRequest):
            return tokens + token_id_count(request)
        tokens += CHAT_MESSAGE_OVERHEAD * len(request.messages) + NON_TEXT_PART_TOKENS * non_text_parts(request)
        if request.tools:
            tokens += adm.conservative_tokens(orjson.dumps(request.tools).decode())
        return tokens

    async def _admit(
        self,
        ctx: RequestContext,
        base: Subject,
        limits: list[LimitSpec],
        budgets: list[BudgetSpec],
        prompt_tokens: int,
    ) -> None:
        """Rate limits and budget reservation in one atomic step (one Redis round trip)."""
        checks, lenient, tpm_labels = adm.rate_checks(limits, prompt_tokens, base)
        holds = await self._holds(ctx, base, budgets, prompt_tokens) if budgets else []
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
        by_label = {adm.limit_key(limit, base): limit for limit in limits}
        tpm_keys = [(f"tpm:{label}", 60.0 / (by_label[label].tpm or 1)) for label in tpm_labels]
        ctx.admission = adm.Admission(ctx.request_id, holds, tpm_keys, base)
        self._warn(ctx, holds, result.counters)

    def _output_tokens(self, ctx: RequestContext, target: Target, prompt_tokens: int) -> int:
        """The most output the request may produce: its limit (one is set when it sent none, so that what is
        reserved is also what is enforced) × answers per prompt (`n`, `best_of`) × prompts."""
        if ctx.endpoint is Endpoint.EMBEDDINGS:
            return 0
        request = ctx.request
        requested = getattr(request, "output_limit", None)
        default = self.gov.settings.admission.default_max_output_tokens
        each = adm.output_allowance(requested, target.model.context_length, prompt_tokens, default)
        if requested is None:
            cap_output(ctx, max(each, 1))
        assert not isinstance(request, EmbeddingRequest)
        return each * request.choices * request.prompts

    async def _holds(
        self, ctx: RequestContext, base: Subject, budgets: list[BudgetSpec], prompt_tokens: int
    ) -> list[adm.BudgetHold]:
        config = self.gov.settings.admission
        target = ctx.candidates[0]
        output = self._output_tokens(ctx, target, prompt_tokens)
        worst = adm.worst_case_usd(self.meter, ctx.candidates, prompt_tokens, output, config)
        if worst is None and config.unknown_price == "reject" and any(b.usd and b.mode == "hard" for b in budgets):
            raise PermissionDenied(
                f"`{target.public}` has no known price, so hard USD budgets cannot admit it "
                "(set a price in the config, or admission.unknown_price: allow)",
                code="price_unknown",
            )
        now = datetime.now(UTC)
        worst_nano = to_nanousd(worst) if worst is not None else 0
        tokens = prompt_tokens + output
        holds = [adm.hold_for(b, now, worst_nano, tokens, partition(b.scope, base)) for b in budgets]
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
    return AdmitStage(services.governance, services.targets, services.meter, services.settings.routes, services.outbox)


STAGE = StageSpec("admit", 200, build)
