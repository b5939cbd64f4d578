"""`budget_spent`: what the ledger says a budget's window has spent. The one definition used by governance
(reconciling the live counters), the admin API, `/v1/margin/usage` and the dashboard.

A budget counts `request` rows (cache hits cost nothing to the budget) whose scope matches, like
governance.rules.matches: global, team, org, model, backend (the hourly rollup), key (the daily rollup), tag
k=v (the daily rollup when the tag key is rolled up, else rows). Budget windows are whole hours, days or
months (or the whole ledger), so whole buckets come from the rollups.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from margin.ledger.read.sums import totals
from margin.ledger.read.window import Window

SCOPE_DIMS = {"team": "team", "org": "org", "model": "model", "backend": "backend", "key": "key"}


def budget_spent(
    connection: sa.Connection, kind: str, value: str | None, usd: bool, start: datetime | None, end: datetime | None
) -> int:
    """Nano-USD (usd) or tokens spent in [start, end) by requests in the scope (kind, value)."""
    if kind == "global":
        match = None
    elif kind == "tag":
        name, _, tag_value = (value or "").partition("=")
        match = (name, tag_value)
    elif kind in SCOPE_DIMS and value is not None:
        match = (SCOPE_DIMS[kind], value)
    else:
        return 0
    sums = totals(connection, Window(start, end), kinds=("request",), match=match)
    return sums["cost_nanousd"] if usd else sums["input_tokens"] + sums["output_tokens"]
