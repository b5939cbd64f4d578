"""Migration 0004's hourly rollup and its insert trigger, frozen as they were (migration 0005 replaced both
with per-batch rollups in margin.ledger.rollup). Used by 0004's upgrade and by 0005's downgrade only."""

from __future__ import annotations

from typing import Any

# Few, low-cardinality dimensions: with keys, features and customers as well, a busy hour has nearly as many
# combinations as requests and the rollup saves nothing (measured on 1M synthetic rows: 999,851 rollup rows).
# Groupings outside these dimensions read the ledger rows (indexed by time).
DIMENSIONS = ("kind", "team", "model", "backend", "region")
TAGGED: tuple[str, ...] = ()

# measure -> SQL on one ledger row (`{r}` is NEW or the table name); summed into the rollup
MEASURES = {
    "requests": "1",
    "cache_hits": "CASE WHEN {r}.kind = 'cache_hit' THEN 1 ELSE 0 END",
    "errors": "CASE WHEN {r}.http_status >= 400 THEN 1 ELSE 0 END",
    "ok_requests": "CASE WHEN {r}.http_status < 400 THEN 1 ELSE 0 END",
    "input_tokens": "{r}.input_tokens",
    "output_tokens": "{r}.output_tokens",
    "cost_nanousd": "COALESCE({r}.cost_nanousd, 0)",
    "unpriced": "CASE WHEN {r}.cost_nanousd IS NULL THEN 1 ELSE 0 END",
    "priced_tokens": "CASE WHEN {r}.cost_nanousd IS NULL THEN 0 ELSE {r}.input_tokens + {r}.output_tokens END",
    "energy_j": "COALESCE({r}.energy_j, 0.0)",
    "co2e_g": "COALESCE({r}.co2e_g, 0.0)",
    "energy_measured": "CASE WHEN {r}.energy_method = 'measured' THEN 1 ELSE 0 END",
    "energy_modelled": "CASE WHEN {r}.energy_method = 'modelled' THEN 1 ELSE 0 END",
    "energy_unknown": "CASE WHEN {r}.energy_j IS NULL THEN 1 ELSE 0 END",
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
    "busy_ms": "CASE WHEN {r}.kind = 'request' THEN COALESCE({r}.busy_ms, {r}.backend_ms, 0.0) ELSE 0.0 END",
    "approx_busy": ("CASE WHEN {r}.kind = 'request' AND {r}.busy_ms IS NULL AND {r}.backend_ms > 0 THEN 1 ELSE 0 END"),
    "ttft_n": "CASE WHEN {r}.ttft_ms IS NULL THEN 0 ELSE 1 END",
}
FLOATS = ("energy_j", "co2e_g", "busy_ms")


def _hour(dialect: str, r: str) -> str:
    if dialect == "sqlite":
        return f"strftime('%Y-%m-%dT%H:00:00', {r}.created_at)"
    return f"""to_char(date_trunc('hour', {r}.created_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD"T"HH24:00:00')"""


def _dimension(dialect: str, r: str, name: str) -> str:
    if name in TAGGED:
        tag = f"json_extract({r}.tags, '$.{name}')" if dialect == "sqlite" else f"({r}.tags ->> '{name}')"
        return f"COALESCE({tag}, '')"
    return f"COALESCE({r}.\"{name}\", '')"


def _columns() -> str:
    return ", ".join(["hour", *DIMENSIONS, *MEASURES, "first_at"])


def _values(dialect: str, r: str, aggregate: bool) -> str:
    dims = [_hour(dialect, r), *(_dimension(dialect, r, d) for d in DIMENSIONS)]
    sums = [f"SUM({sql.format(r=r)})" if aggregate else sql.format(r=r) for sql in MEASURES.values()]
    first = f"MIN({r}.created_at)" if aggregate else f"{r}.created_at"
    return ", ".join([*dims, *sums, first])


def _upsert_tail(table: str) -> str:
    keys = ", ".join(["hour", *DIMENSIONS])
    updates = [f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES]
    updates.append(
        f"first_at = CASE WHEN excluded.first_at < {table}.first_at THEN excluded.first_at ELSE {table}.first_at END"
    )
    return f"ON CONFLICT ({keys}) DO UPDATE SET " + ", ".join(updates)


KINDS = "('request', 'cache_hit')"


def create_sql(dialect: str) -> list[str]:
    """Statements creating the trigger (the table itself comes from the migration)."""
    insert = f"INSERT INTO ledger_hourly ({_columns()}) VALUES ({_values(dialect, 'NEW', False)}) "
    insert += _upsert_tail("ledger_hourly")
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER ledger_hourly_rollup AFTER INSERT ON ledger WHEN NEW.kind IN {KINDS} BEGIN {insert}; END"
        ]
    return [
        "CREATE FUNCTION ledger_hourly_rollup() RETURNS trigger AS $$ BEGIN "
        f"IF NEW.kind IN {KINDS} THEN {insert}; END IF; RETURN NULL; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER ledger_hourly_rollup AFTER INSERT ON ledger FOR EACH ROW "
        "EXECUTE FUNCTION ledger_hourly_rollup()",
    ]


def drop_sql(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return ["DROP TRIGGER IF EXISTS ledger_hourly_rollup"]
    return ["DROP TRIGGER IF EXISTS ledger_hourly_rollup ON ledger", "DROP FUNCTION IF EXISTS ledger_hourly_rollup()"]


def backfill_sql(dialect: str) -> str:
    """Rebuild the rollup from ledger rows (run on an empty rollup: at migration time)."""
    dims = ", ".join([_hour(dialect, "ledger"), *(_dimension(dialect, "ledger", d) for d in DIMENSIONS)])
    return (
        f"INSERT INTO ledger_hourly ({_columns()}) SELECT {_values(dialect, 'ledger', True)} "
        f"FROM ledger WHERE ledger.kind IN {KINDS} GROUP BY {dims}"
    )


def rebuild(connection: Any) -> None:
    """Recompute the rollup from the ledger (after rows were deleted by hand: the ledger is append-only)."""
    connection.exec_driver_sql("DELETE FROM ledger_hourly")
    connection.exec_driver_sql(backfill_sql(connection.dialect.name))
