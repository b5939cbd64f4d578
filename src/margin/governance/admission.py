"""Budgets and rate limits for one request: price the worst case, reserve it against every budget that
applies (all or nothing), and settle to the actual cost when the request ends, whatever its outcome.

Amounts are integers: nano-USD for `usd` budgets, tokens for `tokens` budgets. The worst case is the most
input the request can be billed for (`margin.pipeline.ceiling.input_bound`) plus `max_tokens` (or the model's
context left, or `admission.default_max_output_tokens`), priced for the dearest of the request's candidate
models (its fallbacks included) whose price is known."""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from margin.backend_config import BackendConfig, HttpBackendConfig
from margin.economics import tiers
from margin.economics.meter import Meter
from margin.economics.money import capped_nanousd, from_nanousd, usd_str
from margin.governance.rules import SHARED, Part, Subject, partition
from margin.governance.store import Gcra, Hold
from margin.specs import AdmissionConfig, BudgetSpec, LimitSpec
from margin.types import Target, Usage

MINUTE = 60.0
DAY = 86_400


def window(period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
    """Calendar-aligned UTC window [start, end) holding `now`; (None, None) for lifetime budgets."""
    now = now.astimezone(UTC)
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + timedelta(days=32)).replace(day=1)
        return start, following
    return None, None


def window_stamp(start: datetime | None) -> str:
    """The part of a counter's name that names its window."""
    return f"{start:%Y%m%dT%H}" if start is not None else "lifetime"


def counter_name(budget: BudgetSpec, start: datetime | None, part: Part = SHARED) -> str:
    """One counter per budget, scope and unit (`~basis`) and window, and per org and per value for per-org and
    per-value scopes (`Part.suffix`; budget names never hold `#`, `|` or `~`)."""
    return _counter(budget, window_stamp(start), part)


def _counter(budget: BudgetSpec, stamp: str, part: Part, basis: str | None = None) -> str:
    """`basis`: `budget_basis(budget)`, where the caller has it already."""
    name = budget.name if part is SHARED else budget.name + part.suffix()
    return f"{name}~{basis or budget_basis(budget)}@{stamp}"


def budget_basis(budget: BudgetSpec) -> str:
    return _basis(budget.scope.label(), budget.usd is not None)


@functools.lru_cache(maxsize=4096)
def _basis(scope: str, usd: bool) -> str:
    """What a counter adds up (its scope and unit), in its name: a budget replaced under the same name with
    another scope or unit gets a counter of its own, reconciled from the ledger. Before, it went on from the
    old counter: a budget moved onto a team that had already spent $3 of a new $1 cap admitted $0.98 more."""
    return hashlib.blake2b(f"{'usd' if usd else 'tokens'} {scope}".encode(), digest_size=4).hexdigest()


def budget_limit(budget: BudgetSpec) -> int:
    return capped_nanousd(budget.usd) if budget.usd is not None else int(budget.tokens or 0)


@dataclass(frozen=True, slots=True)
class BudgetHold:
    budget: BudgetSpec
    hold: Hold
    resets_at: datetime | None
    part: Part = SHARED  # whose counter this is (per-org, per-value scopes: `partition`)


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request holds; `settle` turns it into spend (the store makes a second settle a no-op).
    `subject` is the caller as the rules saw it (no model): a hold is charged only if its budget matches the
    model that finally served (a fallback's model budget is reserved for the worst case, not charged)."""

    request_id: str
    holds: list[BudgetHold] = field(default_factory=list)
    tpm_keys: list[tuple[str, float]] = field(default_factory=list)  # (gcra key, seconds per token)
    subject: Subject | None = None
    unpriced: tuple[str, ...] = ()  # candidates (public names) the reservation had no price for


def hold_for(budget: BudgetSpec, now: datetime, usd_nano: int, tokens: int, part: Part = SHARED) -> BudgetHold:
    start, end = window(budget.period, now)
    return _hold(budget, now, end, window_stamp(start), (usd_nano, tokens), part)


def _hold(
    budget: BudgetSpec,
    now: datetime,
    end: datetime | None,
    stamp: str,
    amounts: tuple[int, int],
    part: Part,
    fixed: tuple[str, int] | None = None,
) -> BudgetHold:
    """`amounts`: the request's (nano-USD, tokens); `fixed`: the budget's (`budget_basis`, `budget_limit`)."""
    basis, limit = fixed if fixed is not None else (budget_basis(budget), budget_limit(budget))
    expire = None if end is None else int((end - now).total_seconds()) + DAY
    amount = amounts[0] if budget.usd is not None else amounts[1]
    hold = Hold(_counter(budget, stamp, part, basis), limit, amount, budget.mode == "hard", expire)
    return BudgetHold(budget, hold, end, part)


MAX_FIXED = 4096  # budgets whose basis and limit `Windows` holds before it starts again


class Windows:
    """`hold_for` for the request path, with each period's window and counter stamp computed once per UTC hour
    (every window starts and ends on a whole UTC hour, so all of an hour's requests share theirs) instead of
    per request (`astimezone`, `replace`, `strftime`: ~10 µs a budget), and each budget's counter basis and
    limit in nano-USD once per budget (the spec is immutable; a reload brings new ones) instead of per request
    (~1-2 µs a budget)."""

    def __init__(self) -> None:
        self._hour = -1
        self._windows: dict[str, tuple[datetime | None, str]] = {}
        self._fixed: dict[int, tuple[BudgetSpec, tuple[str, int]]] = {}  # id → the spec (held: its id stays its)

    def hold(self, budget: BudgetSpec, now: datetime, usd_nano: int, tokens: int, part: Part = SHARED) -> BudgetHold:
        """The same hold as `hold_for(budget, now, usd_nano, tokens, part)`."""
        hour = int(now.timestamp() // 3600)
        if hour != self._hour or len(self._fixed) > MAX_FIXED:  # specs of rules since replaced go with the hour
            self._hour, self._windows, self._fixed = hour, {}, {}
        found = self._windows.get(budget.period)
        if found is None:
            start, end = window(budget.period, now)
            found = self._windows[budget.period] = (end, window_stamp(start))
        fixed = self._fixed.get(id(budget))
        if fixed is None or fixed[0] is not budget:
            fixed = self._fixed[id(budget)] = (budget, (budget_basis(budget), budget_limit(budget)))
        return _hold(budget, now, found[0], found[1], (usd_nano, tokens), part, fixed[1])


def output_allowance(requested: int | None, context_length: int | None, prompt_tokens: int, default: int) -> int:
    if requested is not None:
        return requested
    if context_length is not None:
        return max(context_length - prompt_tokens, 0)
    return default


def conservative_tokens(text: str) -> int:
    """An upper-bound token count when no tokenizer is known: one token per 3 characters, rounded up."""
    return math.ceil(len(text) / 3)


def busy_estimate_s(backend: BackendConfig, tokens: int, config: AdmissionConfig) -> float:
    """How long `tokens` keep a self-hosted backend busy at its configured throughput (`hardware.tokens_per_s`,
    else `admission.reserve_tokens_per_s`)."""
    hardware = backend.hardware
    return tokens / ((hardware.tokens_per_s if hardware else None) or config.reserve_tokens_per_s)


def busy_allowance_s(backend: BackendConfig, tokens: int, config: AdmissionConfig) -> float:
    """The busy seconds a hard USD budget reserves for a call of `tokens` on a backend priced by busy time, and
    the most the call may run (the analogue of `max_tokens`, for time): the estimate at its throughput, at
    least `admission.hard_busy_reserve_s` (queueing, a slow first token), at most the backend's own total
    `timeout_s` (it cannot run longer anyway)."""
    allowance = max(busy_estimate_s(backend, tokens, config), config.hard_busy_reserve_s)
    return min(allowance, backend.timeout_s) if isinstance(backend, HttpBackendConfig) else allowance


def worst_case_usd(
    meter: Meter,
    candidates: Sequence[Target],
    prompt_tokens: int,
    output_tokens: int,
    config: AdmissionConfig,
    busy_allowance: Mapping[str, float] | None = None,
    tier: str | None = None,
) -> tuple[Decimal, tuple[str, ...]]:
    """The dearest priced candidate's cost for this many tokens, and the candidates with no known price (they
    add nothing here: `admission.unknown_price` decides whether a request that may reach one runs at all).
    A candidate in `busy_allowance` (public name → seconds) is priced at that busy time, not the estimate.
    `tier`: the `service_tier` asked for; each candidate is priced at the dearest tier it may serve it at
    (`tiers.possible`: for `auto` or none, also the tiers its backend allows, one of which may be the upstream
    project's default). A candidate is unpriced when the tier asked for (or the standard one) has no price; a
    tier the upstream may choose that has none for the model is not one the model is offered at."""
    worst, unpriced = Decimal(0), []
    usage = Usage(prompt_tokens, output_tokens, source="estimated")
    allowances, tokens = busy_allowance or {}, prompt_tokens + output_tokens
    for target in candidates:
        backend = meter.settings.backends[target.backend_name]
        busy_s = allowances.get(target.public)
        if busy_s is None:
            busy_s = busy_estimate_s(backend, tokens, config)
        asked, *others = tiers.possible(tier, backend)
        cost = meter.cost_usd(target.public, target.model, usage, busy_s, asked)
        if cost is None:
            unpriced.append(target.public)
            continue
        for other in others:
            cost = max(cost, meter.cost_usd(target.public, target.model, usage, busy_s, other) or cost)
        worst = max(worst, cost)
    return worst, tuple(unpriced)


def limit_key(limit: LimitSpec, subject: Subject) -> str:
    """A limit's bucket: per org for per-org scopes (two orgs' teams `support` do not share a bucket), per value
    for per-value ones (`partition`)."""
    part = partition(limit.scope, subject)
    return limit.scope.label() if part is SHARED else limit.scope.label() + part.suffix()


def rate_checks(
    limits: Sequence[LimitSpec], prompt_tokens: int, subject: Subject
) -> tuple[list[Gcra], list[bool], list[str]]:
    """GCRA checks for RPM (strict: one request) and TPM (lenient: admitted unless already in debt), and each
    limit's bucket label (`limit_key`, in the order of `limits`), computed once."""
    checks: list[Gcra] = []
    lenient: list[bool] = []
    labels: list[str] = []
    for limit in limits:
        label = limit_key(limit, subject)
        labels.append(label)
        if limit.rpm:
            checks.append(Gcra(f"rpm:{label}", MINUTE / limit.rpm, MINUTE))
            lenient.append(False)
        if limit.tpm:
            checks.append(Gcra(f"tpm:{label}", MINUTE * prompt_tokens / limit.tpm, MINUTE))
            lenient.append(True)
    return checks, lenient, labels


def reset_text(resets_at: datetime | None) -> str:
    return (
        "it does not reset (lifetime budget)" if resets_at is None else f"it resets at {resets_at:%Y-%m-%dT%H:%M:%SZ}"
    )


def budget_text(budget: BudgetSpec) -> str:
    """A budget's limit in a refusal: `$5` or `1000 tokens`."""
    return f"${budget.usd}" if budget.usd is not None else f"{budget.tokens} tokens"


def amount_text(budget: BudgetSpec, amount: int) -> str:
    """An amount of a budget's counter in a refusal (nano-USD or tokens)."""
    return f"${usd_str(from_nanousd(amount))}" if budget.usd is not None else f"{amount} tokens"
