"""A request's budget reservation changed after admission: a fallback's top-up (no hard budget spent past its
limit across attempts), and a coalesced waiter's reservation given back while it waits (`give_back`, `take_back`).

The reservation made at admission covers one attempt's worst case (the dearest candidate's, `worst_case_usd`).
An attempt that fails after it was sent may still be billed (a 5xx after the work, usage reported beside an
error), and the request's row, and the budgets settled to it, add that to the answering attempt's cost
(`margin.economics.meter.plus`). So before a further attempt, the reservation is extended by what the failed
attempts were billed (rounded up to the nano-USD), on every USD budget it holds, all or nothing: then what
settles (billed failures + one attempt, at most its worst case) is at most what is reserved. A hard budget with
no room for it stops the walk: the client is answered the budget error, and the row says what the failed
attempts were billed. Nothing is added before the first attempt, nor after a failure that was not billed, nor
when the request holds no hard USD budget (a soft budget may settle past its reservation: no round trip to the
counter store, which a Redis blip would turn into a 503 for a fallback that would have answered).

The store is told the amounts each hold is to be (`Governance.resize`), not changes: a reply lost after the
store made the change (a connection reset) leaves the caller unsure, and telling it again changes nothing more.
A top-up whose reply is lost raises `Overloaded` (503) and stops the walk: the store may hold the larger
reservation until the request settles, which releases all of it (it errs towards holding more, never less). A
give-back whose reply is lost counts as made: the waiter that then calls upstream itself takes its reservation
again (`take_back`, checked), and a take-back that fails is a 503, so upstream is never called with less held
than the request's worst case."""

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
    if not any(item.hold.hard and item.budget.usd is not None for item in admission.holds):
        return billed  # soft budgets only: settled past their reservation by design, no store round trip
    extra = billed - covered
    amounts = [item.hold.amount + (extra if item.budget.usd is not None else 0) for item in admission.holds]
    refused = await governance.resize(admission, amounts, record.started_at)
    if refused is None:
        return billed
    raise _refusal(
        refused,
        "would be exceeded by a fallback: the attempts that failed were billed "
        f"${usd_str(from_nanousd(billed))}, and the next may cost up to what was reserved for one attempt",
    )


async def give_back(governance: Governance, request: Request) -> tuple[int, ...]:
    """A coalesced waiter (`margin.pipeline.steps.cache`) gives its reservation back while it waits for another
    request's answer: served from it, it is a cache hit, charged nothing, and its worst case held meanwhile
    refused other requests for nothing. What it gave back, per hold, for `take_back`. Where the store did not
    answer, the reservation may or may not have been given back (a reply lost after the change): it counts as
    given back, so that `take_back` sets it again before any upstream call."""
    admission = request.record.admission
    if admission is None or not admission.holds:
        return ()
    amounts = tuple(item.hold.amount for item in admission.holds)
    try:
        await governance.resize(admission, [0] * len(amounts), request.record.started_at)
    except MarginError as exc:
        log.warning(
            "request %s: a coalesced wait's reservation may not have been given back (it is set again before an "
            "upstream call): %s",
            request.id,
            printable(exc.message),
        )
    return amounts


async def take_back(governance: Governance, request: Request, amounts: tuple[int, ...]) -> None:
    """The waiter got no answer and calls upstream itself: its reservation is set again to `amounts`, checked as
    at admission. Raises `BudgetExceeded` when a hard budget has no room for it any more, `Overloaded` when the
    store does not answer (nothing is called either way)."""
    admission = request.record.admission
    if admission is None or not amounts:
        return
    refused = await governance.resize(admission, amounts, request.record.started_at)
    if refused is None:
        return
    budget, most = refused[0].budget, amounts[admission.holds.index(refused[0])]
    raise _refusal(
        refused,
        "has no room for this request any more: it waited for an identical request's answer, which did not come, "
        "and must call upstream itself",
        f", this request may cost up to {adm.amount_text(budget, most)}",
    )


def _refusal(refused: tuple[adm.BudgetHold, tuple[int, int]], why: str, more: str = "") -> BudgetExceeded:
    """The budget error of a hold that had no room for its increase: `why`, then the counter as the store had it,
    `more`, and when the budget resets."""
    item, (spent, reserved) = refused
    budget = item.budget
    return BudgetExceeded(
        f"budget `{budget.name}` ({budget.scope.label()}, {adm.budget_text(budget)} per {budget.period}) {why} "
        f"(spent {adm.amount_text(budget, spent)}, reserved by requests in flight "
        f"{adm.amount_text(budget, reserved)}{more}); {adm.reset_text(item.resets_at)}"
    )
