"""What the writer does with a row the database refuses, so that one bad row never blocks the rows behind it.

A batch that fails for a reason other than the database being unreachable is written again row by row. A
row that still fails is set aside in `ledger_dead_letter` with the error and the whole row (as JSON), and a
coerced copy (strings cut to their column, NUL replaced, integers clamped to their column) is written to the
ledger so the request is still counted; the dead letter says whether that worked (`salvaged`).

Rows are validated at parse time (protocol.py), so this is the last line, not the first: it catches what
an upstream sends (a long error code, absurd token counts) and whatever validation missed.
"""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from margin.ledger.models import ledger

MAX_ERROR_CHARS = 2000
# 32-bit token columns are summed in pairs by the rollup trigger (input + output): each must stay below 2^30
_INT_RANGE = {sa.Integer: (-(2**30), 2**30 - 1), sa.BigInteger: (-(2**62), 2**62 - 1)}


def is_transient(exc: BaseException) -> bool:
    """The database is unreachable, locked or missing a table: keep the rows and retry the batch later.
    Anything else is about the rows themselves."""
    return isinstance(exc, sqlite3.OperationalError | sa.exc.OperationalError | sa.exc.InterfaceError)


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd")


def _coerce_value(column: sa.Column[Any], value: Any) -> Any:
    kind = column.type
    if isinstance(value, str):
        value = _text(value)
        length = getattr(kind, "length", None)
        return value[:length] if length else value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        low, high = next((r for t, r in _INT_RANGE.items() if type(kind) is t), _INT_RANGE[sa.BigInteger])
        return min(max(value, low), high)
    if isinstance(value, float) and not math.isfinite(value):
        return None if column.nullable else 0.0
    if isinstance(value, dict | list):
        return json.loads(_text(json.dumps(value, default=str)).replace("\\u0000", "\\ufffd"))
    return value


def coerce(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of the row every column can hold (what is lost is kept in the dead letter)."""
    return {name: _coerce_value(ledger.c[name], value) if name in ledger.c else value for name, value in row.items()}


def row_json(row: dict[str, Any]) -> str:
    try:
        return orjson.dumps(row, default=str).decode()
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(row, default=str)


def dead_letter(row: dict[str, Any], error: BaseException, salvaged: bool) -> dict[str, Any]:
    """The dead-letter row of a refused ledger row (its text escaped: the database refused it once)."""
    message = _text(f"{error.__class__.__name__}: {error}")[:MAX_ERROR_CHARS]
    return {
        "request_id": _text(str(row.get("request_id")))[:64],
        "kind": _text(str(row.get("kind")))[:16],
        "failed_at": datetime.now(UTC),
        "error": message,
        "row": row_json(row),
        "salvaged": salvaged,
    }
