"""Request outcomes: `POST /v1/margin/feedback` and `margin feedback import`.

One row per request id. Posting again for the same request replaces the outcome (the latest post wins) and
bumps `revisions` only when something changed, so replaying the same post is a no-op. A batch is checked
whole (fields, request ids, ownership) before anything is written: it lands entirely or not at all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, StrictBool, StrictStr, ValidationError
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect

from margin.economics.money import from_nanousd, to_nanousd, usd_str
from margin.errors import InvalidRequest, NotFound
from margin.ledger import measures
from margin.ledger.models import feedback, ledger
from margin.specs import MAX_USD

FIELDS = ("request_id", "success", "score", "value")
MAX_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Outcome:
    request_id: str
    success: bool | None
    score: float | None
    value_nanousd: int | None

    def to_json(self) -> dict[str, Any]:
        value = None if self.value_nanousd is None else usd_str(from_nanousd(self.value_nanousd))
        return {"request_id": self.request_id, "success": self.success, "score": self.score, "value": value}


def _value(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"{where}`value` must be a number of USD", param="value")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidRequest(f"{where}`value` must be a number of USD", param="value") from exc
    if not amount.is_finite():
        raise InvalidRequest(f"{where}`value` must be finite", param="value")
    try:
        return to_nanousd(amount)
    except ValueError as exc:
        raise InvalidRequest(f"{where}`value` must be within ±{MAX_USD} USD", param="value") from exc


class FeedbackItem(BaseModel):
    """One outcome as the API takes it (`POST /v1/margin/feedback`; documented from this model in
    /openapi.json). `value` is USD as a decimal string or a number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")
    success: StrictBool | None = None
    score: Annotated[float, Strict(), AllowInfNan(False)] | None = None
    value: StrictStr | Annotated[float, Strict()] | None = None


def parse_outcome(item: Any, where: str = "") -> Outcome:
    """One feedback object; errors name the field (and `where`, e.g. `item 3: `)."""
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}send a JSON object with request_id and success and/or score")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"{where}unknown fields {unknown}", param=unknown[0])
    try:
        checked = FeedbackItem.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        raise InvalidRequest(f"{where}`{param}`: {first['msg']}", param=param) from exc
    outcome = Outcome(checked.request_id, checked.success, checked.score, _value(checked.value, where))
    if outcome.success is None and outcome.score is None:
        raise InvalidRequest(f"{where}send `success` and/or `score`", param="success")
    return outcome


def parse_batch(body: Any, limit: int | None = MAX_BATCH) -> list[Outcome]:
    """A single object or a list of them; one request id at most once per batch."""
    items = body if isinstance(body, list) else [body]
    if not items or (limit is not None and len(items) > limit):
        raise InvalidRequest(f"send 1 to {limit} feedback objects")
    single = not isinstance(body, list)
    outcomes = [parse_outcome(item, "" if single else f"item {n}: ") for n, item in enumerate(items)]
    seen: set[str] = set()
    for outcome in outcomes:
        if outcome.request_id in seen:
            raise InvalidRequest(f"request_id {outcome.request_id!r} appears twice", param="request_id")
        seen.add(outcome.request_id)
    return outcomes


def _task(connection: sa.Connection) -> sa.ColumnElement[Any]:
    """A ledger row's task (traffic rows only: other kinds belong to no task)."""
    task: sa.ColumnElement[str] = sa.literal_column(measures.task(connection.dialect.name, "ledger"))
    return sa.case((ledger.c.kind.in_(measures.KINDS), task), else_=None)


def owners(connection: sa.Connection, request_ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
    """request id → (key id, task) of its ledger row, for the ids that exist."""
    found: dict[str, tuple[str | None, str | None]] = {}
    task = _task(connection)
    for start in range(0, len(request_ids), 500):
        chunk = list(request_ids[start : start + 500])
        query = sa.select(ledger.c.request_id, ledger.c.key_id, task).where(ledger.c.request_id.in_(chunk))
        for request_id, key_id, row_task in connection.execute(query):  # a request id may have rows of other kinds
            if row_task is not None or request_id not in found:
                found[request_id] = (key_id, row_task)
    return found


def check(
    connection: sa.Connection, outcomes: Sequence[Outcome], key_id: str | None, admin: bool
) -> dict[str, tuple[str | None, str | None]]:
    """(key id, task) of each request id found in the ledger that this caller may grade: a key that is not an
    admin sees only its own requests, so another key's request is missing to it exactly as an id that does not
    exist is (one 404 for both: a key cannot learn which ids exist from the answer)."""
    found = owners(connection, [o.request_id for o in outcomes])
    if admin:
        return found
    return {request_id: owner for request_id, owner in found.items() if owner[0] == key_id}


def link_tasks(connection: sa.Connection) -> int:
    """Set the task of feedback rows written without one (bulk loads, rows written by hand); returns how many."""
    traffic = sa.and_(ledger.c.request_id == feedback.c.request_id, ledger.c.kind.in_(measures.KINDS))
    task = sa.select(_task(connection)).where(traffic).limit(1).scalar_subquery()
    return connection.execute(sa.update(feedback).where(feedback.c.task.is_(None)).values(task=task)).rowcount


def _upsert(connection: sa.Connection) -> Any:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite_dialect
    insert = dialect.insert(feedback)
    new = insert.excluded
    changed = (
        feedback.c.success.is_distinct_from(new.success)
        | feedback.c.score.is_distinct_from(new.score)
        | feedback.c.value_nanousd.is_distinct_from(new.value_nanousd)
    )
    return insert.on_conflict_do_update(
        index_elements=["request_id"],
        set_={
            "success": new.success,
            "score": new.score,
            "value_nanousd": new.value_nanousd,
            "key_id": new.key_id,
            "task": new.task,
            "updated_at": sa.case((changed, new.updated_at), else_=feedback.c.updated_at),
            "revisions": feedback.c.revisions + sa.case((changed, 1), else_=0),
        },
    )


def record(
    engine: sa.Engine, outcomes: Sequence[Outcome], key_id: str | None, admin: bool, now: datetime | None = None
) -> None:
    """Check then write a batch in one transaction (all or nothing)."""
    now = now or datetime.now(UTC)
    with engine.begin() as connection:
        found = check(connection, outcomes, key_id, admin)
        missing = [o.request_id for o in outcomes if o.request_id not in found]
        if missing:
            extra = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            whose = "" if admin else " made with this key"
            raise NotFound(f"no request {missing[0]!r}{whose} in the ledger{extra}", param="request_id")
        rows = [
            {
                "request_id": o.request_id,
                "key_id": key_id,
                "success": o.success,
                "score": o.score,
                "value_nanousd": o.value_nanousd,
                "created_at": now,
                "updated_at": now,
                "revisions": 1,
                "task": found[o.request_id][1],
            }
            for o in outcomes
        ]
        connection.execute(_upsert(connection), rows)


def _csv_item(row: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
    if "success" in item:
        text = str(item["success"]).strip().lower()
        if text not in ("true", "false", "1", "0"):
            raise InvalidRequest(f"success {item['success']!r} must be true/false/1/0", param="success")
        item["success"] = text in ("true", "1")
    if "score" in item:
        try:
            item["score"] = float(item["score"])
        except ValueError as exc:
            raise InvalidRequest(f"score {item['score']!r} is not a number", param="score") from exc
    return item


def read_file(name: str, text: str) -> list[Outcome]:
    """JSON lines (`.jsonl`) or CSV with a header (request_id,success,score,value)."""
    items: Iterable[Any]
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            items = [_csv_item(row) for row in reader]
        except csv.Error as exc:
            raise InvalidRequest(f"{name}:{reader.line_num}: not CSV: {exc}") from exc
    else:
        try:
            items = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"{name}: not JSON lines: {exc}") from exc
    return parse_batch(list(items), limit=None)
