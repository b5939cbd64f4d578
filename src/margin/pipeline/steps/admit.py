"""admit: back-pressure (the ledger's outbox is full → 503), the per-key cap on concurrent streams (held
until the stream ends, however it ends; traded for one of the key's as many waiting places while the request
only waits for an identical request's upstream call, margin.pipeline.steps.cache), rate limits (RPM/TPM,
GCRA) and the budget reservation of the worst case the route step priced, in one atomic step of the counter
store. The reservation is settled by the outermost step whatever happens to the request afterwards."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from margin.economics.money import capped_nanousd, from_nanousd, usd_str
from margin.errors import BudgetExceeded, Overloaded, PermissionDenied, RateLimited, too_many_streams
from margin.governance import admission as adm
from margin.governance.rules import Subject, partition
from margin.governance.service import Governance
from margin.governance.store import Admitted, Gcra, Hold
from margin.pipeline.steps.settle import LEDGER_BACKLOG, RowSink
from margin.pipeline.values import Next, Reply, Request, RouteDecision, StreamSlot
from margin.specs import LimitSpec, Scope


class Admit:
    def __init__(self, governance: Governance, outbox: RowSink | None = None) -> None:
        self.gov = governance
        self.outbox = outbox
        self.windows = adm.Windows()

    async def __call__(self, request: Request, next: Next) -> Reply:
        if self.outbox is not None and self.outbox.full:
            raise Overloaded(
                "the ledger is behind (its outbox is full); retry shortly",
                code=LEDGER_BACKLOG,
                headers={"retry-after": "1"},
            )
        key = request.principal.key_id
        if key is None or not request.is_stream:
            await self._admit(request)
            return await next(request)
        slot = StreamSlot(self.gov.streams, self.gov.stream_waiters, key, request.id)
        if not await slot.retake():
            raise too_many_streams(slot.cap)
        try:
            await self._admit(request)
            return await next(request._replace(slot=slot))
        finally:
            slot.lend()

    async def _admit(self, request: Request) -> None:
        decision = request.routed()
        limits = self.gov.rules.limits_for(request.subject) if self.gov.rules.limits else []
        if limits or decision.budgets:
            await self._reserve(request, decision, limits)

    async def _reserve(self, request: Request, decision: RouteDecision, limits: list[LimitSpec]) -> None:
        """Rate limits and budget reservation in one atomic step (one Redis round trip)."""
        base = request.subject
        checks, lenient, labels = adm.rate_checks(limits, decision.prompt_tokens, base)
        holds = await self._holds(request, decision) if decision.budgets else []
        admit = functools.partial(self._admit_once, request.id, [h.hold for h in holds], checks, lenient)
        result = await admit()
        if result.unseeded:  # the store lost a counter (Redis restarted without persistence): the ledger again
            await self.gov.reseed(holds, request.record.started_at)  # the holds' windows (`_holds`), not now's
            result = await admit()
            if result.unseeded:
                raise Overloaded(
                    "the budget counters were lost and could not be restored; retry", code="governance_unavailable"
                )
        if result.wait > 0:
            raise rate_limited(limits, result.wait)
        if result.failed is not None:
            raise self._exceeded(holds[result.failed], result.counters[result.failed])
        by_label = dict(zip(labels, limits, strict=True))
        tpm_keys = [
            (f"tpm:{label}", 60.0 / (by_label[label].tpm or 1))
            for label, limit in zip(labels, limits, strict=True)
            if limit.tpm
        ]
        request.record.admission = adm.Admission(request.id, holds, tpm_keys, base, decision.unpriced)
        for item, (spent, reserved) in zip(holds, result.counters, strict=True):
            if item.hold.limit and 100 * (spent + reserved) >= item.budget.alert_pct * item.hold.limit:
                share = 100 * (spent + reserved) / item.hold.limit
                request.record.notices["x-margin-budget-warning"] = f"{item.budget.name}={share:.0f}%"

    async def _admit_once(
        self, request_id: str, holds: list[Hold], checks: list[Gcra], lenient: list[bool]
    ) -> Admitted:
        try:
            return await self.gov.store.admit(
                request_id, holds, self.gov.settings.admission.reservation_ttl_s, checks, lenient
            )
        except Overloaded:  # no answer from the store (Redis): it may have reserved all the same
            await self.gov.release_unanswered(request_id)
            raise

    async def _holds(self, request: Request, decision: RouteDecision) -> list[adm.BudgetHold]:
        config = self.gov.settings.admission
        worst = decision.worst_usd
        if (
            decision.unpriced
            and config.unknown_price == "reject"
            and any(b.usd and b.mode == "hard" for b in decision.budgets)
        ):
            names = ", ".join(f"`{name}`" for name in decision.unpriced)
            raise PermissionDenied(
                f"{names} (the model or a fallback of `{decision.first.public}`) has no known price, so hard USD "
                "budgets cannot admit it (set a price in the config, or admission.unknown_price: allow)",
                code="price_unknown",
            )
        # the budgets' windows of when the request started, its ledger row's `created_at`: a request started at
        # 12:59:59.999 and admitted at 13:00:00.001 was counted in 13:00's window and its row in 12:00's
        now = request.record.started_at
        worst_nano = capped_nanousd(worst) if worst is not None else 0  # best_of × prompts × max_tokens: any size
        tokens = decision.prompt_bound + decision.output_tokens
        subject = request.subject
        hold = self.windows.hold
        holds = [hold(b, now, worst_nano, tokens, partition(b.scope, subject)) for b in decision.budgets]
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
            f"budget `{budget.name}` ({_scope_text(budget.scope)}, {limit} per {budget.period}) would be exceeded: "
            f"spent {fmt(spent)}, reserved by requests in flight {fmt(reserved)}, this request may cost up to "
            f"{fmt(hold.amount)}; {adm.reset_text(item.resets_at)}",
            headers=headers,
        )


def rate_limited(limits: list[LimitSpec], wait: float) -> RateLimited:
    """429: one of `limits` has no room for `wait` seconds."""
    labels = ", ".join(f"{_scope_text(limit.scope)} (rpm {limit.rpm}, tpm {limit.tpm})" for limit in limits)
    return RateLimited(
        f"rate limit reached for {labels}; retry in {wait:.1f}s",
        headers={"retry-after": str(max(1, round(wait + 0.5)))},
    )


async def admit_rpm(gov: Governance, request_id: str, subject: Subject) -> None:
    """A request that only counts against RPM limits (one request each), not TPM or budgets: POST
    /v1/messages/count_tokens (margin.api.count_tokens). No reservation is made, so nothing is settled."""
    limits = [limit for limit in gov.rules.limits_for(subject) if limit.rpm] if gov.rules.limits else []
    if not limits:
        return
    checks = [check for check, lenient in zip(*adm.rate_checks(limits, 0, subject)[:2], strict=True) if not lenient]
    ttl = gov.settings.admission.reservation_ttl_s
    result = await gov.store.admit(request_id, [], ttl, checks, [False] * len(checks))
    if result.wait > 0:
        raise rate_limited(limits, result.wait)


def _scope_text(scope: Scope) -> str:
    """A rule's scope in a refusal; a per-value one says the figures are this user's (or tag value's) own."""
    if not scope.per_value:
        return scope.label()
    each = "each end user" if scope.kind == "user" else f"each `{(scope.value or '').partition('=')[0]}` value"
    return f"{scope.label()}: {each} separately, the figures are this one's own"
