"""margin.ledger.stored: stored responses on SQLite and PostgreSQL (migration 0026 there too): a chain walked
oldest turn first, bounded in turns and bytes; an expired or deleted link; owner scoping (key, org); paging;
pruning. The HTTP side is tests/api/test_responses_stored.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from margin.errors import InvalidRequest, NotFound
from margin.ledger import db, stored

ADA = stored.Owner("k1", None)
LIMITS = (30, 1024 * 1024)
WIDE = stored.Bounds(100, 1024 * 1024)


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    yield engine
    engine.dispose()


def _item(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{text}", "role": role, "content": [{"type": "input_text", "text": text}]}


def _turns(engine: sa.Engine, count: int, owner: stored.Owner = ADA) -> list[str]:
    """`count` chained turns (`resp_0` … ), each input `q<n>` answered `a<n>`."""
    previous = None
    for number in range(count):
        response = {
            "id": f"resp_{number}",
            "model": "m",
            "status": "completed",
            "output": [_item(f"a{number}", "assistant")],
        }
        assert stored.save(
            engine, owner, stored.Turn(f"resp_{number}", previous, [_item(f"q{number}")], response), LIMITS
        )
        previous = f"resp_{number}"
    return [f"resp_{number}" for number in range(count)]


def _texts(items: list[dict[str, Any]]) -> list[str]:
    return [item["content"][0]["text"] for item in items]


def _exercise(engine: sa.Engine) -> None:
    ids = _turns(engine, 3)
    assert _texts(stored.chain(engine, ADA, ids[-1], WIDE)) == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert stored.fetch(engine, ADA, ids[0])["output"][0]["id"] == "msg_a0"
    for stranger in (stored.Owner("k2", None), stored.Owner("k1", "acme"), stored.Owner(None, None)):
        with pytest.raises(NotFound):
            stored.fetch(engine, stranger, ids[0])
        with pytest.raises(InvalidRequest, match="no response with id") as refused:
            stored.chain(engine, stranger, ids[-1], WIDE)
        assert (refused.value.code, refused.value.param) == ("previous_response_not_found", "previous_response_id")
    with pytest.raises(InvalidRequest, match="longer than 2"):
        stored.chain(engine, ADA, ids[-1], stored.Bounds(2, 1024 * 1024))
    with pytest.raises(InvalidRequest, match="over 100 bytes"):
        stored.chain(engine, ADA, ids[-1], stored.Bounds(100, 100))
    assert stored.delete(engine, ADA, ids[1]) == {"id": ids[1], "object": "response", "deleted": True}
    with pytest.raises(InvalidRequest, match=r"\(resp_1\) expired or was deleted") as refused:
        stored.chain(engine, ADA, ids[-1], WIDE)
    assert refused.value.code == "previous_response_not_found"
    later = datetime.now(UTC) + timedelta(days=31)
    with pytest.raises(NotFound):
        stored.fetch(engine, ADA, ids[0], now=later)
    assert stored.prune(engine, now=later) == 2
    assert stored.prune(engine, now=later) == 0


def test_chains_owners_bounds_and_pruning_on_sqlite(sqlite: sa.Engine) -> None:
    _exercise(sqlite)


def test_org_scoping_paging_and_the_size_bound(sqlite: sa.Engine) -> None:
    acme = stored.Owner("k1", "acme")
    items = [_item(str(n)) for n in range(5)]
    turn = stored.Turn("resp_x", None, items, {"id": "resp_x", "model": "m", "status": "completed", "output": []})
    assert stored.save(sqlite, acme, turn, LIMITS)
    colleague = stored.Owner("k9", "acme")
    assert stored.fetch(sqlite, colleague, "resp_x")["id"] == "resp_x"
    with pytest.raises(NotFound):
        stored.fetch(sqlite, stored.Owner("k1", None), "resp_x")  # the same key id outside the org: not its row
    data, more = stored.items(sqlite, colleague, "resp_x", (2, None, False))
    assert _texts(data) == ["4", "3"] and more
    data, more = stored.items(sqlite, colleague, "resp_x", (2, "msg_3", False))
    assert _texts(data) == ["2", "1"] and more
    data, more = stored.items(sqlite, colleague, "resp_x", (10, "msg_1", True))
    assert _texts(data) == ["2", "3", "4"] and not more
    with pytest.raises(InvalidRequest):
        stored.items(sqlite, colleague, "resp_x", (10, "msg_nope", True))
    big = stored.Turn("resp_big", None, [_item("z" * 2000)], {"id": "resp_big", "output": []})
    assert not stored.save(sqlite, acme, big, (30, 1024))
    with pytest.raises(NotFound):
        stored.fetch(sqlite, acme, "resp_big")


def test_postgres_migrates_stores_and_walks(pg_ledger: sa.Engine) -> None:
    assert "stored_responses" in sa.inspect(pg_ledger).get_table_names()
    _exercise(pg_ledger)
    db.downgrade(str(pg_ledger.url.render_as_string(hide_password=False)), "0025")
    assert "stored_responses" not in sa.inspect(pg_ledger).get_table_names()
