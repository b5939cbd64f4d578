"""The ledger's SQL vocabulary: what one row contributes to each sum, which bucket and group it falls in, and
which latency bin. The rollup maintenance (margin.ledger.rollup) and the read model's rows path
(margin.ledger.read) render the same text, so both add up the same integers by construction.

Every measure is an integer: money in nano-USD, energy in microjoules (`energy_uj`), carbon in nanograms
(`co2e_ng`), busy time in microseconds (a local 20-token request emits ~2 mg of CO2e, a fake one in the tests
well under a milligram, so coarser units would round real emissions away). Integer sums do not depend on the
order rows are added in, so the rollup and the rows give the same figure to the unit (float sums differed in
the last digits).
"""

from __future__ import annotations

import math
import re

MICRO = 1_000_000  # µJ per J
NANO = 1_000_000_000  # ng per g (SQLite's integer SUM holds 9,200 t)
KINDS = ("request", "cache_hit")  # rows that are traffic (other kinds, e.g. refunds, are not summed)
KINDS_SQL = "('request', 'cache_hit')"

# per-row SQL of each summed measure; `{r}` is the table or alias, `{busy}` the rounded busy time
MEASURES: dict[str, str] = {
    "requests": "1",
    "cache_hits": "CASE WHEN {r}.kind = 'cache_hit' THEN 1 ELSE 0 END",
    "errors": "CASE WHEN {r}.http_status >= 400 THEN 1 ELSE 0 END",
    "ok_requests": "CASE WHEN {r}.http_status < 400 THEN 1 ELSE 0 END",
    "input_tokens": "{r}.input_tokens",
    "output_tokens": "{r}.output_tokens",
    "cost_nanousd": "COALESCE({r}.cost_nanousd, 0)",
    "unpriced": "CASE WHEN {r}.cost_nanousd IS NULL THEN 1 ELSE 0 END",
    "priced_tokens": "CASE WHEN {r}.cost_nanousd IS NULL THEN 0 ELSE {r}.input_tokens + {r}.output_tokens END",
    "energy_uj": "COALESCE({r}.energy_uj, 0)",
    "co2e_ng": "COALESCE({r}.co2e_ng, 0)",
    # the tokens of the rows with a carbon figure: carbon per token divides by these, not by every token (0028)
    "co2e_tokens": "CASE WHEN {r}.co2e_ng IS NULL THEN 0 ELSE {r}.input_tokens + {r}.output_tokens END",
    "energy_measured": "CASE WHEN {r}.energy_method = 'measured' THEN 1 ELSE 0 END",
    "energy_modelled": "CASE WHEN {r}.energy_method = 'modelled' THEN 1 ELSE 0 END",
    "energy_unknown": "CASE WHEN {r}.energy_uj IS NULL THEN 1 ELSE 0 END",
    # the tokens of the rows with an energy figure (energy per token's divisor; 0028)
    "energy_tokens": "CASE WHEN {r}.energy_uj IS NULL THEN 0 ELSE {r}.input_tokens + {r}.output_tokens END",
    "saved_nanousd": "COALESCE({r}.saved_nanousd, 0)",
    "routed": "CASE WHEN {r}.router_score IS NOT NULL OR {r}.counterfactual_nanousd IS NOT NULL THEN 1 ELSE 0 END",
    "routing_saved_nanousd": (
        "CASE WHEN {r}.counterfactual_nanousd IS NOT NULL AND {r}.cost_nanousd IS NOT NULL "
        "THEN {r}.counterfactual_nanousd - {r}.cost_nanousd ELSE 0 END"
    ),
    "routing_unpriced": (
        "CASE WHEN ({r}.router_score IS NOT NULL OR {r}.counterfactual_nanousd IS NOT NULL) "
        "AND ({r}.counterfactual_nanousd IS NULL OR {r}.cost_nanousd IS NULL) THEN 1 ELSE 0 END"
    ),
    "busy_us": "CASE WHEN {r}.kind = 'request' THEN {busy} ELSE 0 END",
    "approx_busy": "CASE WHEN {r}.kind = 'request' AND {r}.busy_ms IS NULL AND {r}.backend_ms > 0 THEN 1 ELSE 0 END",
    "ttft_n": "CASE WHEN {r}.ttft_ms IS NULL THEN 0 ELSE 1 END",
}

# the cost levers the ledger rows carry (margin.ledger.read.levers), summed per hour in ledger_hourly only (they
# are read as a window's totals, never grouped by a tag): batch lines (`batch_id`) and lowest-carbon /
# lowest-cost routes (`route_pref`, against their default's counterfactual). `{default_ng}` is the default's
# carbon rounded to nanograms, so the saved carbon is an integer sum like every other.
_PREF_CARBON = "{r}.route_pref IS NOT NULL AND {r}.default_co2e_g IS NOT NULL AND {r}.co2e_ng IS NOT NULL"
_PREF_COST = "{r}.route_pref IS NOT NULL AND {r}.default_cost_nanousd IS NOT NULL AND {r}.cost_nanousd IS NOT NULL"
LEVERS: dict[str, str] = {
    "batch_requests": "CASE WHEN {r}.batch_id IS NOT NULL THEN 1 ELSE 0 END",
    "batch_cost_nanousd": "CASE WHEN {r}.batch_id IS NOT NULL THEN COALESCE({r}.cost_nanousd, 0) ELSE 0 END",
    "batch_discount_nanousd": "CASE WHEN {r}.batch_id IS NOT NULL THEN COALESCE({r}.discount_nanousd, 0) ELSE 0 END",
    "pref_requests": "CASE WHEN {r}.route_pref IS NOT NULL THEN 1 ELSE 0 END",
    "pref_moved": "CASE WHEN {r}.route_pref IS NOT NULL AND {r}.model <> {r}.route_default THEN 1 ELSE 0 END",
    "pref_saved_co2e_ng": f"CASE WHEN {_PREF_CARBON} THEN {{default_ng}} - {{r}}.co2e_ng ELSE 0 END",
    "pref_saved_nanousd": f"CASE WHEN {_PREF_COST} THEN {{r}}.default_cost_nanousd - {{r}}.cost_nanousd ELSE 0 END",
    "pref_unknown": (
        f"CASE WHEN {{r}}.route_pref IS NOT NULL AND NOT ({_PREF_CARBON} AND {_PREF_COST}) THEN 1 ELSE 0 END"
    ),
}

# dimensions of the hourly rollup (ledger_hourly); NULL is stored as ''
HOURLY_DIMS = ("kind", "team", "org", "model", "backend", "region")
# plain-column groupings of the daily rollup (ledger_daily), besides the rolled-up tag keys
DAILY_COLUMNS = {"key": "key_id", "endpoint": "endpoint", "status": "status", "user": "user"}
DAILY_DIMS = (*DAILY_COLUMNS, "error")  # error = "<http status> <error code>"
# the team of rollup rows that add up every team (ledger_daily's tag keys, ledger_latency's dimensions but ''
# and model); no key can have it as its team (margin.keys.create_key refuses it)
EVERY_TEAM = "*"
# hourly dimensions also kept per day in ledger_daily ('' = every row), so a month reads ~30 rows per group,
# not ~720: whole days from there, the window's partial days from ledger_hourly, partial hours from rows
DAILY_CORE = ("", "model", "backend", "region", "org")
# latency histograms (ledger_latency): '' (all rows) and model per team; the others across teams only
TEAM_HISTOGRAMS = ("", "model")
HISTOGRAM_DIMS = ("", "model", "backend", "region", "key", "endpoint", "status", "user")
METRICS = {"e2e": "e2e_ms", "ttft": "ttft_ms"}
COLUMNS = {"key": "key_id", "team": "team", "org": "org", "model": "model", "backend": "backend",
           "region": "region", "endpoint": "endpoint", "status": "status", "user": "user", "kind": "kind",
           "service_tier": "service_tier"}  # fmt: skip
TAG_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Latency histogram: 8 log-spaced bins per doubling. A bin b holds values in [2^(b/8), 2^((b+1)/8)) ms and
# stands for its geometric middle 2^((b+0.5)/8): within 2^(1/16) − 1 = 4.43 % of any value in it.
BINS_PER_OCTAVE = 8
BIN_SCALE = BINS_PER_OCTAVE / math.log(2)  # bin = floor(ln(v) × BIN_SCALE)
ZERO_BIN = -1000  # values ≤ 0 ms
RELATIVE_ERROR = 2 ** (1 / (2 * BINS_PER_OCTAVE)) - 1


def representative(bin_: int) -> float:
    """The value a histogram bin stands for (ms)."""
    return 0.0 if bin_ == ZERO_BIN else 2 ** ((bin_ + 0.5) / BINS_PER_OCTAVE)


def bin_bounds(bin_: int) -> tuple[float, float]:
    if bin_ == ZERO_BIN:
        return (-math.inf, 0.0)
    return 2 ** (bin_ / BINS_PER_OCTAVE), 2 ** ((bin_ + 1) / BINS_PER_OCTAVE)


def rounded(dialect: str, expr: str) -> str:
    """An integer from a non-negative float, half up, the same on SQLite and PostgreSQL (PostgreSQL's own
    float → bigint cast rounds half to even, SQLite's truncates)."""
    if dialect == "sqlite":
        return f"CAST(({expr}) + 0.5 AS INTEGER)"
    return f"CAST(FLOOR(({expr}) + 0.5) AS BIGINT)"


def measure(name: str, dialect: str, r: str) -> str:
    busy = rounded(dialect, f"COALESCE({r}.busy_ms, {r}.backend_ms, 0.0) * 1000")
    return MEASURES[name].format(r=r, busy=busy)


def lever(name: str, dialect: str, r: str) -> str:
    return LEVERS[name].format(r=r, default_ng=rounded(dialect, f"{r}.default_co2e_g * {NANO}"))


def check_tag_key(key: str) -> str:
    if not TAG_KEY.match(key):
        raise ValueError(f"tag key {key!r}: letters, digits, '_' and '-' only (1-64)")
    return key


def tag(dialect: str, r: str, key: str) -> str:
    """The row's value of tag `key`; `r` '' leaves the column unqualified (an index's expression: SQLite refuses
    `table.column` there, and either database matches it to the qualified text of a query)."""
    check_tag_key(key)
    tags = f"{r}.tags" if r else "tags"
    if dialect == "sqlite":
        return f"json_extract({tags}, '$.\"{key}\"')"
    return f"({tags} ->> '{key}')"


def group(dialect: str, r: str, by: str) -> str:
    """The row's value of a grouping: a column, `error`, or a tag key."""
    if by == "error":
        return f"(CAST({r}.http_status AS TEXT) || ' ' || COALESCE({r}.error_code, ''))"
    if by in COLUMNS:
        return f'{r}."{COLUMNS[by]}"'
    return tag(dialect, r, by)


def hour(dialect: str, r: str) -> str:
    """ISO start of the row's UTC hour: 2026-11-02T13:00:00."""
    if dialect == "sqlite":
        return f"strftime('%Y-%m-%dT%H:00:00', {r}.created_at)"
    return f"""to_char(date_trunc('hour', {r}.created_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD"T"HH24:00:00')"""


def day(dialect: str, r: str, column: str = "created_at") -> str:
    """The row's UTC day: 2026-11-02."""
    if dialect == "sqlite":
        return f"strftime('%Y-%m-%d', {r}.{column})"
    return f"to_char({r}.{column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


def latency_bin(column: str) -> str:
    """The histogram bin of a latency in SQL (NULL stays NULL). SQLite needs its math functions (ln, floor:
    built in since 3.35 where compiled in, as Debian's is; margin.ledger.db adds them otherwise)."""
    return (
        f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} <= 0 THEN {ZERO_BIN} "
        f"ELSE CAST(FLOOR(LN({column}) * {BIN_SCALE!r}) AS INTEGER) END"
    )


def _sized(value: str) -> str:
    """`<length>:<value>`, or `-` for NULL: a part ends where its length says, so no two tenants' parts read
    alike (a NULL is neither '' nor a value, and never makes the whole identity NULL)."""
    return f"(CASE WHEN {value} IS NULL THEN '-' ELSE CAST(LENGTH({value}) AS TEXT) || ':' || {value} END)"


def tenant(r: str) -> str:
    """Whose a row's task is: what a viewer other than an admin is shown (margin.dashboard.auth), its org's
    team (two orgs' teams of one name are different teams, read.Window), or, for a key without a team, which
    sees its own rows only, its org's key (`k` + the key; `k-` for the rows of no key, in open mode)."""
    who = f"(CASE WHEN {r}.team IS NULL THEN 'k' || {_sized(f'{r}.key_id')} ELSE {_sized(f'{r}.team')} END)"
    return f"{_sized(f'{r}.org')} || '/' || {who}"


def task(dialect: str, r: str) -> str:
    """A request's task: its `task_id` tag within its tenant, else the request itself. Another tenant's equal
    tag is another task: `t:<org>/<team>/<task_id>` (`tenant`: t:4:acme/6:search/T-42, t:-/k8:3f9a0c1e/T-42)
    | `r:<request_id>`. The one formula of a task's identity: the rollups (ledger_tasks), the read model's rows
    path and the task each feedback row is linked to (margin.ledger.feedback) all render this text."""
    return f"COALESCE('t:' || {tenant(r)} || '/' || {tag(dialect, r, 'task_id')}, 'r:' || {r}.request_id)"
