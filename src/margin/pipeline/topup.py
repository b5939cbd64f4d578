"""A request's budget reservation changed after admission: a fallback's top-up (no hard budget spent past its
limit across attempts), and a coalesced waiter's reservation given back while it waits (`give_back`, `take_back`).

The reservation made at admission covers one attempt's worst case (the dearest candidate's, `worst_case_usd`).
An attempt that fails after it was sent may still be billed (a 5xx after the work, usage reported beside an
error), and the request's row, and the budgets settled to it, add that to the answering attempt's cost
(`margin.economics.meter.plus`). So before a further attempt, the reservation is extended by what the failed
attempts were billed (rounded up to the nano-USD), on every USD budget it holds, all or nothing: then what
settles (billed failures + one attempt, at most its worst case) is at most what is reserved. A hard budget with
no room for it stops the walk: the client is answered the budget error, and the row says what the failed
attempts were billed. Nothing is added before the first attempt, nor after a failure that was not billed (no
extra round trip to the counter store on the happy path)."""

from __future__ import annotations

import logging
from decimal import Decimal

from margin.economics.money import capped_nanousd, from_nanousd, usd_str
from margin.errors import BudgetExceeded, MarginError
from margin.governance import admission as adm
from margin.governance.service import Governance
from margin.logs import printable
from margin.pipeline.values import Request

log = logging.getLogger("margin.governance")


def billed_nanousd(cost_usd: Decimal) -> int:
    """`cost_usd` in nano-USD rounded up (the row's cost of every attempt together rounds to at most the
    reservation plus this)."""
    nano = capped_nanousd(cost_usd)
    return nano + 1 if from_nanousd(nano) < cost_usd else nano


async def top_up(governance: Governance, request: Request, covered: int) -> int:
    """What the reservation covers of the failed attempts' charges after this (nano-USD), `covered` before.
    Raises `BudgetExceeded` when a hard budget has no room for the rest (nothing is added)."""
    record = request.record
    earlier, admission = record.earlier_charge, record.admission
    if earlier is None or earlier.cost_usd is None or admission is None:
        return covered
    billed = billed_nanousd(earlier.cost_usd)
    if billed <= covered:
        return covered
    extra = billed - covered
    refused = await governance.resize(
        admission, [extra if item.budget.usd is not None else 0 for item in admission.holds]
    )
    if refused is None:
        return billed
    item, (spent, reserved) = refused
    budget = item.budget
    raise BudgetExceeded(
        f"budget `{budget.name}` ({budget.scope.label()}, ${budget.usd} per {budget.period}) would be exceeded by "
        f"a fallback: the attempts that failed were billed ${usd_str(from_nanousd(billed))}, and the next may cost "
        f"up to what was reserved for one attempt (spent ${usd_str(from_nanousd(spent))}, reserved by requests in "
        f"flight ${usd_str(from_nanousd(reserved))}); {adm.reset_text(item.resets_at)}"
    )


async def give_back(governance: Governance, request: Request) -> tuple[int, ...]:
    """A coalesced waiter (`margin.pipeline.steps.cache`) gives its reservation back while it waits for another
    request's answer: served from it, it is a cache hit, charged nothing, and its worst case held meanwhile
    refused other requests for nothing. What it gave back, per hold, for `take_back` (nothing where the store
    did not answer: it then holds on, as before)."""
    admission = request.record.admission
    if admission is None or not admission.holds:
        return ()
    amounts = tuple(item.hold.amount for item in admission.holds)
    try:
        if await governance.resize(admission, [-amount for amount in amounts]) is None:
            return amounts
    except MarginError as exc:
        log.warning("request %s: a coalesced wait keeps its reservation: %s", request.id, printable(exc.message))
    return ()


async def take_back(governance: Governance, request: Request, amounts: tuple[int, ...]) -> None:
    """The waiter got no answer and calls upstream itself: its reservation is taken again, checked as at
    admission. Raises `BudgetExceeded` when a hard budget has no room for it any more (nothing is called)."""
    admission = request.record.admission
    if admission is None or not amounts:
        return
    refused = await governance.resize(admission, amounts)
    if refused is None:
        return
    item, (spent, reserved) = refused
    budget, most = item.budget, amounts[admission.holds.index(item)]
    raise BudgetExceeded(
        f"budget `{budget.name}` ({budget.scope.label()}, {adm.budget_text(budget)} per {budget.period}) has no room "
        "for this request any more: it waited for an identical request's answer, which did not come, and must call "
        f"upstream itself (spent {adm.amount_text(budget, spent)}, reserved by requests in flight "
        f"{adm.amount_text(budget, reserved)}, this request may cost up to {adm.amount_text(budget, most)}); "
        f"{adm.reset_text(item.resets_at)}"
    )
