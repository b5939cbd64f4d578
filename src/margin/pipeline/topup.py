"""A fallback's top-up of the budget reservation: no hard budget spent past its limit across attempts.

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

from decimal import Decimal

from margin.economics.money import capped_nanousd, from_nanousd, usd_str
from margin.errors import BudgetExceeded
from margin.governance import admission as adm
from margin.governance.service import Governance
from margin.pipeline.values import Request


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
    refused = await governance.top_up(admission, billed - covered)
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
