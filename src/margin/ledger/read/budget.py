"""`budget_spent`: what the ledger says a budget's window has spent. The one definition used by governance
(reconciling the live counters), the admin API, `/v1/margin/usage` and the dashboard.

A budget counts `request` rows (cache hits cost nothing to the budget) whose scope matches, as admission
matched them (governance.rules.matches): global, team, org, model, backend (the hourly rollup), key (the daily
rollup). Budget windows are whole hours, days or months (or the whole ledger), so whole buckets come from the
rollups. Two cases read ledger rows instead:
- `org`: one org's rows (a per-org counter, or a scope naming an org); the rollups other than the hourly one
  have no org column (margin.ledger.read.window);
- user scopes: one user's rows (the pseudonym in the ledger's `user` column, read through the partial index
  ix_ledger_user_created; no rollup has users);
- tag scopes: a tag counts only when the row's key is bound to it (a fixed `customer=acme`, or `customer=*`
  filled from the header) or the row has no key (open mode), so a header tag a caller added never spends
  someone else's budget. The rollups cannot tell bound tags from labels, so tag budgets read the rows of that
  one tag value: through its tag key's index on (value, created_at) (margin.ledger.tag_index: the keys of
  `tags.indexed_keys` have one), else by time over the whole window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from margin.ledger import tag_index
from margin.ledger.models import api_keys, ledger
from margin.ledger.read.sums import row_group, totals
from margin.ledger.read.window import Window, team_org

SCOPE_DIMS = {"team": "team", "org": "org", "model": "model", "backend": "backend", "key": "key"}
# the most a budget's spend reads as: past any budget's limit (a `usd` cap is held at MAX_USD, $9e9, 9e18
# nano-USD) and within the signed 64 bits a counter holds
SPENT_CAP = 2**63 - 1
LOW_BITS = 32  # a row's cost is summed as its high and low 32 bits apart (`saturating_sum`)


def budget_spent(
    connection: sa.Connection,
    kind: str,
    value: str | None,
    usd: bool,
    start: datetime | None,
    end: datetime | None,
    org: tuple[str | None] | None = None,
) -> int:
    """Nano-USD (usd) or tokens spent in [start, end) by requests in the scope (kind, value), only `org`'s rows
    when given ((that org,), or (None,) for keys in no org)."""
    if org is not None and kind == "team" and value is not None:
        org = team_org(connection, value, org)  # no other org has this team: the rollups answer exactly
    window = Window(start, end, org=org)
    if kind == "tag":
        return spent_of(connection.execute(tag_spent_query(connection.dialect.name, value or "", usd, window)).one())
    if kind == "user":  # `value`: the pseudonym the ledger's `user` column holds (one user's counter)
        return _user_spent(connection, value, usd, window)
    if kind == "global":
        match = None
    elif kind in SCOPE_DIMS and value is not None:
        match = (SCOPE_DIMS[kind], value)
    else:
        return 0
    try:
        sums = totals(connection, window, kinds=("request",), match=match)
    except sa.exc.OperationalError as exc:  # SQLite's SUM of rows (an org's scope, the hour not yet rolled up)
        if "integer overflow" not in str(exc.orig):
            raise
        # costs past 2^63 nano-USD (a budget read it as a 503 until its window ended): the rows alone, each
        # cost summed as two halves (every row, a hostile case only)
        clauses = window.where(kinds=("request",))
        if match is not None:
            clauses.append(row_group(connection, match[0]) == match[1])
        return spent_of(connection.execute(sa.select(*saturating_sum(usd)).where(*clauses)).one())
    return min(int(sums["cost_nanousd"] if usd else sums["input_tokens"] + sums["output_tokens"]), SPENT_CAP)


def saturating_sum(usd: bool) -> list[sa.ColumnElement[Any]]:
    """The SQL of a window's spend over ledger rows, as columns `spent_of` adds up: tokens (at most 2^31 a row)
    are one SUM; costs (up to 2^63 nano-USD a row) two, of each row's high and of its low 32 bits, neither of
    which can pass 64 bits (in under 2^31 rows), on either database. Before, one SUM of the costs: on SQLite, rows
    whose costs add past 2^63 nano-USD (five of 2^30 tokens at the dearest prices a config takes) raised
    `integer overflow`, and the budget answered 503 until its window ended; PostgreSQL's SUM of a bigint is a
    numeric, which does not overflow."""
    if not usd:
        return [sa.func.coalesce(sa.func.sum(ledger.c.input_tokens + ledger.c.output_tokens), 0)]
    cost = sa.func.coalesce(ledger.c.cost_nanousd, 0)
    high, low = cost.op(">>")(sa.literal_column(str(LOW_BITS))), cost.op("&")(sa.literal_column(str(2**LOW_BITS - 1)))
    return [sa.func.coalesce(sa.func.sum(high), 0), sa.func.coalesce(sa.func.sum(low), 0)]


def spent_of(row: Sequence[Any]) -> int:
    """The spend `saturating_sum`'s columns say, held at SPENT_CAP (the same on both databases: far over any
    budget, so the budget refuses as spent)."""
    spent = int(row[0]) if len(row) == 1 else (int(row[0]) << LOW_BITS) + int(row[1])
    return min(spent, SPENT_CAP)


def tag_spent_query(dialect: str, tag: str, usd: bool, window: Window) -> sa.Select[Any]:
    """The window's request rows of one tag value (the tag key's index, margin.ledger.tag_index, when it has
    one: its expression is the same text), and of those the rows whose key is bound to that tag (or no key:
    open mode). Keys are never edited, only revoked: their tags are what they were when they ran."""
    name, _, wanted = tag.partition("=")
    value: sa.ColumnElement[str | None] = ledger.c.tags[name].as_string()
    if tag_index.indexable(name):
        value = sa.literal_column(tag_index.expression(dialect, name), sa.String)
    bound = sa.select(api_keys.c.id).where(api_keys.c.tags[name].as_string().is_not(None))
    governed = sa.or_(ledger.c.key_id.is_(None), ledger.c.key_id.in_(bound.scalar_subquery()))
    return sa.select(*saturating_sum(usd)).where(*window.where(kinds=("request",)), governed, value == wanted)


def _user_spent(connection: sa.Connection, user: str | None, usd: bool, window: Window) -> int:
    """One SQL pass over the window's request rows of one user (the rollups have no user column)."""
    if user is None:
        return 0
    query = sa.select(*saturating_sum(usd)).where(*window.where(kinds=("request",)), ledger.c.user == user)
    return spent_of(connection.execute(query).one())


def recorded(connection: sa.Connection, request_ids: Sequence[str], chunk: int = 500) -> dict[str, tuple[int, int]]:
    """Of these requests, those with their row in the ledger (finished, and counted by `budget_spent` from now
    on), with what the row cost: (nano-USD, input + output tokens), what their settle charges its counters."""
    found: dict[str, tuple[int, int]] = {}
    columns = (ledger.c.request_id, ledger.c.cost_nanousd, ledger.c.input_tokens, ledger.c.output_tokens)
    for at in range(0, len(request_ids), chunk):
        query = sa.select(*columns).where(ledger.c.request_id.in_(request_ids[at : at + chunk]))
        for request_id, cost, tokens_in, tokens_out in connection.execute(query):
            found[request_id] = (int(cost or 0), int(tokens_in) + int(tokens_out))
    return found
