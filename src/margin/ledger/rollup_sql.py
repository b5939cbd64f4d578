"""The SQL of the per-batch rollups (margin.ledger.rollup runs it, in this order).

1. `derive`: one pass over the batch's traffic rows into a temporary table (`ledger_rollup_rows`) that holds
   everything a rollup reads, computed once per row: the day, the hour, the latency bins, the task, every
   grouping value (tag values extracted from the JSON once) and every summed measure (measures.MEASURES).
   Before, each of the ~50 branches of the rollup statements evaluated these expressions for every row.
2. Two small pre-aggregates of it (`ledger_rollup_core`: per hour × kind × team × org × model × backend ×
   region; `ledger_rollup_keyed`: per day × kind × team × key × endpoint × status × user × error), from
   which ledger_hourly and all the plain-column dimensions of ledger_daily are upserted; each rolled-up tag
   key has its own (`ledger_rollup_tag<i>`: per day × kind × team × value), read by its per-team and
   across-teams daily sums, and ledger_attach reads the batch's distinct days × team × feature × customer
   (`ledger_rollup_attach`). Latency histograms from per-bin pre-aggregates; the tag keys' from the rows.
3. Tasks: the batch's tasks (`ledger_rollup_tasks`, one row each: anchor and sums; a request that is alone in
   its task without a sort), the current ledger_task_daily contribution of those already known
   (`ledger_rollup_task_delta`, with −1), the ledger_tasks upsert, their new contribution (+1), and one
   upsert of the difference.

What the batch's rows alone give (ROWS and most pre-aggregates: `batch_tables`) is apart from what reads the
rollups (`upserts`, which make the tasks' and the attach rate's own pre-aggregates): a stager thread can fill
the first in a database of its own while the ledger's connection runs the second (margin.ledger.stager).

The temporary tables are made once per connection and emptied after each batch (`Temporary`, `Batch`), so
SQLite prepares each statement once per connection instead of once per batch: a batch's fixed cost went from
6.7 to 2.6 ms of CPU (one-row batches, benchmarks/README.md).

Every sum is an integer sum, so adding pre-aggregated sums gives the rollup the same integers to the unit as
adding the rows one by one (the read model's rows path) — the tests compare the two, and a rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from margin.ledger import measures as m

ROWS = "ledger_rollup_rows"  # + the number of tag keys: its columns (rows_table)
CORE = "ledger_rollup_core"
KEYED = "ledger_rollup_keyed"
ATTACH = "ledger_rollup_attach"
TAGGED = "ledger_rollup_tag"  # + the tag key's index: its pre-aggregate (tagged)
LATENCY = "ledger_rollup_latency"
LATENCY_KEYED = "ledger_rollup_latency_keyed"
TASKS = "ledger_rollup_tasks"
DELTA = "ledger_rollup_task_delta"
DELTA_CORE = "ledger_rollup_task_delta_core"

GROUPS = (*m.COLUMNS, "error")  # groupings kept as columns g_<name> of ROWS (the tag keys as tag<i>)
CHARGE_DIMS = ("key", "team", "model", "backend", "region", "service_tier")  # = read.charges.CHARGE_GRAIN
TASK_ANCHOR = ("team", "key_id", "model", "backend", "region", "feature", "customer")
TASK_DIMS = {"": "''", "feature": "feature", "customer": "customer", "model": "model", "backend": "backend",
             "region": "region", "key": "key_id"}  # fmt: skip
CORE_DIMS = ("kind", "team", "org", "model", "backend", "region")  # = measures.HOURLY_DIMS
KEYED_DIMS = ("kind", "team", "key", "endpoint", "status", "user", "error")
LATENCY_CORE_DIMS = ("team", "model", "backend", "region")  # '' and model per team; backend, region across teams
LATENCY_KEYED_DIMS = ("key", "endpoint", "status", "user")


class Temporary(NamedTuple):
    """A per-batch temporary table: made once per connection (from `select` with no rows: the same columns and
    types), then filled by `select` and emptied for each batch. Making and dropping it for each batch would
    change the connection's schema, and SQLite would then prepare every statement of the batch again (6.7 ms
    of CPU a one-row batch, against ~2.6 ms, benchmarks/README.md)."""

    name: str
    select: str


def rows_table(tag_keys: Sequence[str]) -> str:
    """ROWS has a column per tag key: a table for each count of them, so a connection never fills one made
    for another count (`margin db rebuild-rollups` changes the keys while a gateway ingests)."""
    return f"{ROWS}{len(tag_keys)}"


def _g(name: str) -> str:
    return f"g_{name}"


def _blank(column: str) -> str:
    return f"COALESCE({column}, '')"


def _add(table: str, keys: Sequence[str], columns: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns)
    return f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"


def _tag_columns(tag_keys: Sequence[str]) -> dict[str, str]:
    return {key: f"tag{i}" for i, key in enumerate(tag_keys)}


def derive(dialect: str, source: str, order: str, tag_keys: Sequence[str]) -> Temporary:
    """The batch's traffic rows with everything the rollups read, each computed once."""
    s = "s"
    columns = [
        f"s.{order} AS ord",
        "s.created_at AS created_at",
        f"{m.day(dialect, s)} AS day",
        f"{m.hour(dialect, s)} AS hour",
        *(f"{m.group(dialect, s, g)} AS {_g(g)}" for g in GROUPS),
        *(f"{m.tag(dialect, s, key)} AS {column}" for key, column in _tag_columns(tag_keys).items()),
        f"{m.tag(dialect, s, 'feature')} AS feature",
        f"{m.tag(dialect, s, 'customer')} AS customer",
        f"{m.task(dialect, s)} AS task",
        *(f"{m.latency_bin(f's.{column}')} AS {metric}_bin" for metric, column in m.METRICS.items()),
        *(f"{m.measure(name, dialect, s)} AS {name}" for name in m.MEASURES),
        *(f"{m.lever(name, dialect, s)} AS {name}" for name in m.LEVERS),
        "CASE WHEN s.co2e_ng IS NULL THEN 0 ELSE 1 END AS co2e_known",
    ]
    return Temporary(rows_table(tag_keys), f"SELECT {', '.join(columns)} FROM {source} s WHERE s.kind IN {m.KINDS_SQL}")


def _sums(prefix: str = "") -> list[str]:
    return [f"SUM({prefix}{name}) AS {name}" for name in m.MEASURES]


def pre_aggregates(rows: str) -> list[Temporary]:
    """The per-hour and per-key pre-aggregates of ROWS (measure sums), read by ledger_hourly and ledger_daily."""
    core = [_g(d) for d in CORE_DIMS]
    keyed = [_g(d) for d in KEYED_DIMS]
    return [
        Temporary(
            CORE,
            f"SELECT day, hour, {', '.join(core)}, {', '.join(_sums())}, "
            f"{', '.join(f'SUM({name}) AS {name}' for name in m.LEVERS)}, "
            f"MIN(created_at) AS first_at FROM {rows} GROUP BY day, hour, {', '.join(core)}",
        ),
        Temporary(
            KEYED,
            f"SELECT day, {', '.join(keyed)}, {', '.join(_sums())} FROM {rows} GROUP BY day, {', '.join(keyed)}",
        ),
    ]


def hourly(at: str = "") -> str:
    """ledger_hourly: every measure and the cost levers' sums, from CORE (in schema `at`)."""
    keys, sums = ["hour", *m.HOURLY_DIMS], [*m.MEASURES, *m.LEVERS]
    dims = ["hour", *(_blank(_g(d)) for d in m.HOURLY_DIMS)]
    first = (
        "first_at = CASE WHEN excluded.first_at < ledger_hourly.first_at "
        "THEN excluded.first_at ELSE ledger_hourly.first_at END"
    )
    return (
        f"INSERT INTO ledger_hourly ({', '.join([*keys, *sums, 'first_at'])}) "
        f"SELECT {', '.join([*dims, *(f'SUM({n})' for n in sums), 'MIN(first_at)'])} FROM {at}{CORE} "
        f"WHERE true GROUP BY {', '.join(str(i + 1) for i in range(len(dims)))} "
        f"{_add('ledger_hourly', keys, sums)}, {first}"
    )


def _daily_from(source: str, dim: str, value: str, team: str = _blank(_g("team"))) -> str:
    keys = ["dim", "day", "kind", "team", "value"]
    sums = ", ".join(f"SUM({name})" for name in m.MEASURES)
    return (
        f"INSERT INTO ledger_daily ({', '.join([*keys, *m.MEASURES])}) "
        f"SELECT '{dim}', day, {_blank(_g('kind'))}, {team}, {value}, {sums} FROM {source} "
        f"WHERE true GROUP BY 2, 3, 4, 5 {_add('ledger_daily', keys, list(m.MEASURES))}"
    )


def tagged(rows: str, tag_keys: Sequence[str]) -> list[Temporary]:
    """Per tag key, its pre-aggregate per day × kind × team × value (`value`): the per-team and the across-teams
    daily sums both read it, so the batch's rows are sorted once per tag key, not twice."""
    return [
        Temporary(
            f"{TAGGED}{i}",
            f"SELECT day, g_kind, g_team, {column} AS value, {', '.join(_sums())} FROM {rows} "
            f"GROUP BY day, g_kind, g_team, {column}",
        )
        for i, column in enumerate(_tag_columns(tag_keys).values())
    ]


def daily(tag_keys: Sequence[str], at: str = "") -> list[str]:
    """ledger_daily: the hourly dimensions from CORE, the plain columns from KEYED, the tag keys from their
    pre-aggregates (`tagged`), per team and across teams (team '*', measures.EVERY_TEAM: a tag such as
    `customer` crossed with the teams has ~10x more rows per day than across them, and an admin's view reads
    those)."""
    out = [_daily_from(f"{at}{CORE}", dim, _blank(_g(dim)) if dim else "''") for dim in m.DAILY_CORE]
    out += [_daily_from(f"{at}{KEYED}", dim, _blank(_g(dim))) for dim in m.DAILY_DIMS]
    for i, key in enumerate(_tag_columns(tag_keys)):
        source, value = f"{at}{TAGGED}{i}", _blank("value")
        out += [_daily_from(source, key, value), _daily_from(source, key, value, f"'{m.EVERY_TEAM}'")]
    return out


def _latency_insert(dim: str, value: str, source: str, *, metric: str = "metric", bin_: str = "bin") -> str:
    """Histogram counts of one dimension: from a pre-aggregate (SUM(n), `metric` its column) or, for one
    metric (`metric` a literal), from the rows."""
    keys = ["dim", "metric", "day", "team", "value", "bin"]
    team = _blank(_g("team")) if dim in m.TEAM_HISTOGRAMS else f"'{m.EVERY_TEAM}'"
    count, where = ("SUM(n)", "true") if metric == "metric" else ("COUNT(*)", f"{bin_} IS NOT NULL")
    return (
        f"INSERT INTO ledger_latency ({', '.join([*keys, 'n'])}) SELECT '{dim}', {metric}, day, {team}, {value}, "
        f"{bin_}, {count} FROM {source} WHERE {where} GROUP BY 2, 3, 4, 5, 6 {_add('ledger_latency', keys, ['n'])}"
    )


def _per_bin(rows: str, table: str, dims: Sequence[str]) -> Temporary:
    columns = ", ".join(_g(d) for d in dims)
    metrics = [
        f"SELECT '{metric}' AS metric, day, {columns}, {metric}_bin AS bin, COUNT(*) AS n FROM {rows} "
        f"WHERE {metric}_bin IS NOT NULL GROUP BY day, {columns}, {metric}_bin"
        for metric in m.METRICS
    ]
    return Temporary(table, " UNION ALL ".join(metrics))


def latency_bins(rows: str) -> list[Temporary]:
    """The histograms' pre-aggregates: counts per metric × bin per day × team × model (LATENCY) and per day ×
    key × endpoint × status × user (LATENCY_KEYED)."""
    return [_per_bin(rows, LATENCY, LATENCY_CORE_DIMS), _per_bin(rows, LATENCY_KEYED, LATENCY_KEYED_DIMS)]


def latency(rows: str, tag_keys: Sequence[str], at: str = "") -> list[str]:
    """ledger_latency: histogram counts per dimension from the pre-aggregates (`latency_bins`); the tag keys
    from ROWS (`rows`)."""
    out = []
    for dim in m.HISTOGRAM_DIMS:
        source = LATENCY if dim in ("", *LATENCY_CORE_DIMS) else LATENCY_KEYED
        out.append(_latency_insert(dim, _blank(_g(dim)) if dim else "''", f"{at}{source}"))
    for key, column in _tag_columns(tag_keys).items():
        out += [_latency_insert(key, _blank(column), rows, metric=f"'{x}'", bin_=f"{x}_bin") for x in m.METRICS]
    return out


def attach_days(rows: str) -> Temporary:
    """The batch's distinct days × team × feature × customer (ATTACH), which `attach` reads."""
    distinct = f"SELECT DISTINCT day, {_blank(_g('team'))} AS team, {_blank('feature')} AS feature, "
    return Temporary(ATTACH, f"{distinct}{_blank('customer')} AS customer FROM {rows}")


def attach() -> list[str]:
    """ledger_attach: per month × team (and across teams) × feature × customer, the days it was seen as bits
    (each day's bit is a distinct power of two, so the sum of distinct days' bits is their OR; an upsert ORs in
    the batch's). From the batch's distinct days × team × feature × customer (`attach_days`): per team each
    day is there once, and across teams SUM(DISTINCT) reads that smaller table."""
    bit = "1 << (CAST(substr(day, 9, 2) AS INTEGER) - 1)"
    return [
        "INSERT INTO ledger_attach (month, team, feature, customer, days) "
        f"SELECT substr(day, 1, 7), {team}, feature, customer, {days} FROM {ATTACH} GROUP BY 1, 2, 3, 4 "
        "ON CONFLICT (month, team, feature, customer) DO UPDATE SET days = ledger_attach.days | excluded.days"
        for team, days in (("team", f"SUM({bit})"), (f"'{m.EVERY_TEAM}'", f"SUM(DISTINCT {bit})"))
    ]


def charges(rows: str) -> str:
    """ledger_charges: priced requests per day × key × team × model × backend × region × service tier (NULL
    as '', like every other dimension: flex and priority requests of one model are charges of their own)."""
    dims = [_blank(_g(d)) for d in CHARGE_DIMS]
    sums = ["COUNT(*)", "SUM(input_tokens)", "SUM(output_tokens)", "SUM(cost_nanousd)", "SUM(energy_uj)"]
    sums += ["SUM(co2e_ng)", "SUM(1 - energy_unknown)", "SUM(co2e_known)"]
    names = ["requests", "input_tokens", "output_tokens", "cost_nanousd", "energy_uj", "co2e_ng", "energy_n", "co2e_n"]
    keys = ["day", *CHARGE_DIMS]
    return (
        f"INSERT INTO ledger_charges ({', '.join([*keys, *names])}) SELECT {', '.join(['day', *dims, *sums])} "
        f"FROM {rows} WHERE unpriced = 0 GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))} "
        f"{_add('ledger_charges', keys, names)}"
    )


def batch_tasks(rows: str) -> Temporary:
    """One row per task of the batch: its earliest request (ties: the batch's order) and its sums. A request
    that is its own task ('r:' + its id, measures.task) and the batch's only row of that task is taken as it is
    (half the traffic skips the window's sort); the only other row a task 'r:<id>' can have is the same id's
    other kind (a cache hit), so requests whose id also comes as another kind go through the window."""
    anchor = {c: f"{_g(c)} AS {c}" for c in ("team", "model", "backend", "region")} | {"key_id": "g_key AS key_id"}
    picked = ", ".join(["task", "created_at AS anchor_at", *(anchor.get(c, c) for c in TASK_ANCHOR)])
    alone = (
        f"substr(task, 1, 1) = 'r' AND g_kind = 'request' "
        f"AND task NOT IN (SELECT task FROM {rows} WHERE g_kind <> 'request')"
    )
    inner = (  # one window (one sort): ROW_NUMBER ignores the frame, the sums take the whole partition
        f"SELECT {picked}, ROW_NUMBER() OVER w AS pick, COUNT(*) OVER w AS requests, "
        f"SUM(cost_nanousd) OVER w AS cost_nanousd, SUM(unpriced) OVER w AS unpriced FROM {rows} "
        f"WHERE NOT ({alone}) WINDOW w AS (PARTITION BY task ORDER BY created_at, ord "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
    )
    names = ", ".join(["task", "anchor_at", *TASK_ANCHOR])
    own = f"SELECT {picked}, 1 AS requests, cost_nanousd, unpriced FROM {rows} WHERE {alone}"  # columns in order
    return Temporary(
        TASKS, f"SELECT {names}, requests, cost_nanousd, unpriced FROM ({inner}) t WHERE t.pick = 1 UNION ALL {own}"
    )


def task_contributions(dialect: str, sign: int) -> str | Temporary:
    """The ledger_task_daily contribution (×sign) of the batch's tasks as ledger_tasks holds them now."""
    day = m.day(dialect, "t", "anchor_at")
    columns = ", ".join(f"t.{c}" for c in TASK_ANCHOR)
    select = (
        f"SELECT {sign} AS sign, {day} AS day, {columns}, {sign} * t.cost_nanousd AS cost_nanousd, "
        f"{sign} * t.unpriced AS unpriced FROM {TASKS} b JOIN ledger_tasks t ON t.task = b.task"
    )
    if sign < 0:
        return Temporary(DELTA, select)
    return f"INSERT INTO {DELTA} {select}"


def tasks() -> str:
    """Add the batch's tasks to ledger_tasks; an earlier request moves a task's anchor."""
    names = ["task", "anchor_at", *TASK_ANCHOR, "requests", "cost_nanousd", "unpriced"]
    earlier = "excluded.anchor_at < ledger_tasks.anchor_at"
    moved = ", ".join(
        f"{c} = CASE WHEN {earlier} THEN excluded.{c} ELSE ledger_tasks.{c} END" for c in ("anchor_at", *TASK_ANCHOR)
    )
    return (
        f"INSERT INTO ledger_tasks ({', '.join(names)}) SELECT {', '.join(names)} FROM {TASKS} WHERE true "
        f"{_add('ledger_tasks', ['task'], ['requests', 'cost_nanousd', 'unpriced'])}, {moved}"
    )


def task_daily() -> list[str | Temporary]:
    """ledger_task_daily += the new contribution of the batch's tasks − their old one (DELTA): the anchor's
    plain columns through a pre-aggregate per day × team × model × backend × region × key (DELTA_CORE)."""
    plain = ", ".join(c for c in TASK_ANCHOR if c not in ("feature", "customer"))
    out: list[str | Temporary] = [
        Temporary(
            DELTA_CORE,
            f"SELECT day, {plain}, SUM(sign) AS sign, SUM(cost_nanousd) AS cost_nanousd, SUM(unpriced) AS unpriced "
            f"FROM {DELTA} GROUP BY day, {plain}",
        )
    ]
    keys, sums = ["dim", "day", "team", "value"], ["tasks", "cost_nanousd", "unpriced"]
    for dim, column in TASK_DIMS.items():
        source = DELTA if column in ("feature", "customer") else DELTA_CORE
        out.append(
            f"INSERT INTO ledger_task_daily ({', '.join([*keys, *sums])}) SELECT '{dim}', day, {_blank('team')}, "
            f"{_blank(column)}, SUM(sign), SUM(cost_nanousd), SUM(unpriced) FROM {source} WHERE true "
            f"GROUP BY 2, 3, 4 {_add('ledger_task_daily', keys, sums)}"
        )
    return out


class Batch(NamedTuple):
    """One batch's rollup: `setup` makes the temporary tables where this connection lacks them (no-ops after
    its first batch), `run` fills them and upserts every rollup, `clear` empties them for the next batch."""

    setup: tuple[str, ...]
    run: tuple[str, ...]
    clear: tuple[str, ...]


def batch_tables(dialect: str, source: str, order: str, tag_keys: Sequence[str]) -> list[Temporary]:
    """What the batch's rows alone give (no rollup read): ROWS and most pre-aggregates the upserts read (the
    rest, `upserts` makes from ROWS: a stager's thread and the ledger's share the CPU more evenly)."""
    for key in tag_keys:
        m.check_tag_key(key)
    rows = rows_table(tag_keys)
    return [
        derive(dialect, source, order, tag_keys),
        *pre_aggregates(rows),
        *tagged(rows, tag_keys),
        *latency_bins(rows),
    ]


def upserts(dialect: str, tag_keys: Sequence[str], at: str = "") -> list[str | Temporary]:
    """Every rollup's upsert, reading `batch_tables` from schema `at` ("" or "<schema>."), in order, with the
    pre-aggregates they make themselves (temporary tables of this connection)."""
    rows = f"{at}{rows_table(tag_keys)}"
    return [
        hourly(at),
        *daily(tag_keys, at),
        *latency(rows, tag_keys, at),
        attach_days(rows),
        *attach(),
        charges(rows),
        batch_tasks(rows),
        task_contributions(dialect, -1),
        tasks(),
        task_contributions(dialect, 1),
        *task_daily(),
    ]


def batch(steps: Sequence[str | Temporary], create: str) -> Batch:
    """`steps` as a Batch; `create` makes a table from a name and a select ({} and {}: the table's made empty)."""
    temporary = [step for step in steps if isinstance(step, Temporary)]
    return Batch(
        setup=tuple(create.format(t.name, f"{t.select} LIMIT 0") for t in temporary),
        run=tuple(f"INSERT INTO {s.name} {s.select}" if isinstance(s, Temporary) else s for s in steps),
        clear=tuple(f"DELETE FROM {t.name}" for t in temporary),
    )


def temporary(dialect: str) -> str:
    """`batch`'s `create` for a connection's own temporary tables. PostgreSQL keeps a deleted row's space until
    a VACUUM, which never runs on temporary tables: emptied at commit (truncated in place) too, they do not
    grow batch after batch on a long-lived connection."""
    suffix = " ON COMMIT DELETE ROWS" if dialect == "postgresql" else ""
    return "CREATE TEMPORARY TABLE IF NOT EXISTS {}" + suffix + " AS {}"


def statements(dialect: str, source: str, order: str, tag_keys: Sequence[str]) -> Batch:
    """Every statement of one batch's rollup, in order, on one connection."""
    return batch([*batch_tables(dialect, source, order, tag_keys), *upserts(dialect, tag_keys)], temporary(dialect))
