"""Indexes on the ledger's tag values, one per key of `tags.indexed_keys` (default `customer`): on (the row's
tag value, created_at), holding only the rows that carry that tag. A per-tag-value budget's counter
(`customer=*`) is rebuilt from one customer's rows of its window through it (margin.ledger.read.budget): an
index range, not a scan of the window's rows.

Why an expression index and not a rollup: a budget counts a tag only where the row's key is bound to it (or the
row has no key), which the rollups cannot tell apart from a caller's own labels; the index finds one value's
rows, and the bound-key check then reads only those. It costs the ingest no SQL of its own (no extra statement
per batch): each row with the tag adds one entry to the index's B-tree (~2.5 µs of CPU a row on SQLite,
benchmarks/README.md), which is why the keys are a list of their own and not every rolled-up key.

The tag keys are config, so no migration can name them: migration 0027 indexes the default (`customer`), and
`margin db index-tags` (`sync_steps`) makes the indexes those of the config. The index's expression and the
budget read's are the same text (`expression`), which is how either database matches a query to an expression
index.

`sync_steps` commits each drop and each build on its own: the ledger's writers (the gateways' ingest) wait for one
index's build at a time, not for every key's in one transaction (~1-3 s per million rows each on SQLite), and on
PostgreSQL not at all (CREATE INDEX CONCURRENTLY). An index is built whole or not at all, so a run cut between
steps leaves the steps before it done and the next run does the rest (IF NOT EXISTS: none twice); a concurrent
build cut halfway leaves an INVALID index, which `existing` does not count and the next run drops and rebuilds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import sqlalchemy as sa

from margin.ledger import measures as m

PREFIX = "ix_ledger_tag_"
DEFAULT_KEYS = ("customer",)  # = config.TagsConfig.indexed_keys' default (what migration 0027 indexes)


def indexable(key: str) -> bool:
    """A tag key an index can be named after and written for (margin.ledger.measures.TAG_KEY)."""
    return m.TAG_KEY.match(key) is not None


def expression(dialect: str, key: str, table: str = "ledger") -> str:
    """The row's value of tag `key` as the indexes hold it (SQLite: json_extract; PostgreSQL: ->>); `table` ''
    in the index's own definition (unqualified)."""
    return m.tag(dialect, table, key)


def name(key: str) -> str:
    """The index of tag `key` (PostgreSQL keeps 63 bytes of a name: a long key is cut and told apart by a hash)."""
    m.check_tag_key(key)
    if len(key) <= 40:
        return f"{PREFIX}{key}"
    return f"{PREFIX}{key[:30]}_{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def name_of(tag: str) -> str | None:
    """The index a tag scope's key (`customer=*`: customer) would have; None for a key no index can have."""
    key = tag.partition("=")[0]
    return name(key) if indexable(key) else None


def create_sql(dialect: str, key: str, concurrently: bool = False) -> str:
    value, how = expression(dialect, key, ""), " CONCURRENTLY" if concurrently else ""
    return f'CREATE INDEX{how} IF NOT EXISTS "{name(key)}" ON ledger ({value}, created_at) WHERE {value} IS NOT NULL'


def existing(connection: sa.Connection, valid: bool = True) -> set[str]:
    """The tag-value indexes the ledger has (`valid`: PostgreSQL's usable ones only; False: its INVALID ones,
    left by a concurrent build that was cut, which no query uses; none on SQLite)."""
    if connection.dialect.name == "sqlite":
        if not valid:
            return set()
        query = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'"
    else:
        query = (
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t"
            " ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE t.relname = 'ledger' AND n.nspname = current_schema()"
            f" AND i.indisvalid = {'true' if valid else 'false'}"
        )
    return {row[0] for row in connection.exec_driver_sql(query) if row[0].startswith(PREFIX)}


def plan(dialect: str, have: set[str], broken: set[str], keys: Iterable[str], concurrently: bool) -> list[str]:
    """The steps (SQL) that index exactly these tag keys, given the valid tag-value indexes (`have`) and the
    INVALID ones (`broken`, PostgreSQL: a concurrent build cut halfway, which no query uses and which would make
    CREATE ... IF NOT EXISTS a no-op): drop the others and the broken ones, then create the missing ones."""
    wanted = {name(key): key for key in keys}
    how = " CONCURRENTLY" if concurrently else ""
    steps = [f'DROP INDEX{how} IF EXISTS "{index}"' for index in sorted((have - wanted.keys()) | broken)]
    return steps + [
        create_sql(dialect, key, concurrently) for index, key in sorted(wanted.items()) if index not in have
    ]


def sync_steps(engine: sa.Engine, keys: Iterable[str]) -> list[str]:
    """`sync`, each drop and each build committed on its own (PostgreSQL: CONCURRENTLY, writes go on), so a run
    cut between steps is finished by the next one; an INVALID index (a concurrent build cut halfway) is rebuilt.
    Returns the steps taken, as SQL."""
    with engine.connect() as connection:
        have, broken = existing(connection), existing(connection, valid=False)
    postgres, done = engine.dialect.name == "postgresql", list[str]()
    for sql in plan(engine.dialect.name, have, broken, keys, concurrently=postgres):
        options = {"isolation_level": "AUTOCOMMIT"} if postgres else {}  # CONCURRENTLY: no transaction around it
        with engine.connect().execution_options(**options) as connection, connection.begin():
            connection.exec_driver_sql(sql)
        done.append(sql)
    return done


def sync(connection: sa.Connection, keys: Iterable[str]) -> None:
    """Index exactly these tag keys, in the caller's transaction (migration 0027): `plan`'s steps, an INVALID
    index with a wanted name dropped and rebuilt too (on a large ledger this reads every row once per new key)."""
    have, broken = existing(connection), existing(connection, valid=False)
    for sql in plan(connection.dialect.name, have, broken, keys, concurrently=False):
        connection.exec_driver_sql(sql)
