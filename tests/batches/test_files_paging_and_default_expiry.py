"""Two Files API gaps against OpenAI, through `margin serve` in a subprocess with the official `openai` SDK:

- an upload without `expires_after` expires 30 days after its creation, as OpenAI's purpose=batch files do
  (`batches.upload_expires_after_s`; null or 0 keeps it until deleted; its own `expires_after` wins). It was
  kept for ever (`expires_at` null).
- a list goes on past a file deleted (or expired) between two pages: the next page `after` its id starts where
  it was. It was a 404, which ended the SDK's auto-pagination. Another key's id as `after` shows none of that
  key's objects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai.types.file_create_params import ExpiresAfter

from margin import keys
from margin.batches import store
from margin.config import parse_settings
from margin.errors import ConfigError, NotFound
from margin.ledger import db
from margin.ledger.models import batch_files
from tests.batches.helpers import jsonl, line
from tests.helpers import margin_serve

DAYS_30 = 2_592_000
HOUR: ExpiresAfter = {"anchor": "created_at", "seconds": 3600}
MICRO = timedelta(microseconds=1)


@dataclass
class Live:
    url: str
    db: Path
    clients: dict[str, openai.OpenAI]


def _config(folder: Path, batches: dict[str, Any]) -> Path:
    config = {
        "storage": {"flush_interval_ms": 10},
        "backends": {"fake": {"kind": "fake", "output_tokens": 5}},
        "models": {"fake-chat": {"backend": "fake", "price": {"input": "1", "output": "2"}}},
        "batches": {"poll_s": 0.05, "objective": "asap", **batches},
    }
    path = folder / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _keys(db_path: Path, *names: str) -> dict[str, str]:
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    made = {name: keys.create_key(engine, keys.NewKey(name, "t", {}, None, False, None))[1] for name in names}
    engine.dispose()
    return made


@contextmanager
def _serve(folder: Path, batches: dict[str, Any]) -> Iterator[Live]:
    """`margin serve` on a fresh SQLite ledger with two keys, alice's and bob's, and an SDK client for each."""
    ledger = folder / "ledger.db"
    made = _keys(ledger, "alice", "bob")
    config = _config(folder, batches)
    with margin_serve(ledger, folder / "serve.log", config=config, ready_s=60) as (url, _process):
        clients = {name: openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) for name, key in made.items()}
        try:
            yield Live(url, ledger, clients)
        finally:
            for client in clients.values():
                client.close()


def _expire(db_path: Path, file_id: str) -> None:
    """The file's expiry written in the past, as if its time had come (the worker may sweep it at once)."""
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    past = datetime.now(UTC) - timedelta(seconds=1)
    with engine.begin() as connection:
        connection.execute(batch_files.update().where(batch_files.c.id == file_id).values(expires_at=past))
    engine.dispose()


def _upload(client: openai.OpenAI, name: str, expires_after: ExpiresAfter | None = None) -> Any:
    content = ("f.jsonl", jsonl(line(name)))
    if expires_after is None:
        return client.files.create(file=content, purpose="batch")
    return client.files.create(file=content, purpose="batch", expires_after=expires_after)


@pytest.mark.parametrize(
    ("batches", "default"),
    [
        ({}, DAYS_30),
        ({"upload_expires_after_s": 7200}, 7200),
        ({"upload_expires_after_s": None}, None),
        ({"upload_expires_after_s": 0}, None),
    ],
    ids=["default", "7200", "null", "zero"],
)
def test_an_upload_without_expires_after_expires_as_configured(
    tmp_path: Path, batches: dict[str, Any], default: int | None
) -> None:
    with _serve(tmp_path, batches) as live:
        client = live.clients["alice"]
        plain = _upload(client, "a")
        expected = None if default is None else plain.created_at + default
        assert plain.expires_at == expected  # was None whatever the config (and the config key was refused)
        assert client.files.retrieve(plain.id).expires_at == expected
        assert {f.id: f.expires_at for f in client.files.list()} == {plain.id: expected}
        own = _upload(client, "b", HOUR)  # an upload's own expires_after wins
        assert own.expires_at == own.created_at + 3600
        batch = client.batches.create(
            input_file_id=plain.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after=HOUR,
        )
        assert batch.input_file_id == plain.id


@pytest.mark.parametrize(
    "batches",
    [
        {"upload_expires_after_s": -1},
        {"upload_expires_after_s": 1.5},
        {"upload_expires_after_s": "a month"},
        {"upload_expires_after": 3600},
    ],
)
def test_a_bad_default_expiry_is_refused_with_the_config(batches: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"batches\.upload_expires_after"):
        parse_settings({"batches": batches})


def _page(client: openai.OpenAI, order: str, after: str | None = None) -> tuple[list[str], bool]:
    if after is None:
        page = client.files.list(limit=2, order=order)  # type: ignore[arg-type]
    else:
        page = client.files.list(limit=2, order=order, after=after)  # type: ignore[arg-type]
    return [f.id for f in page.data], bool(page.has_more)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with _serve(tmp_path_factory.mktemp("paging"), {}) as live:
        yield live


@pytest.mark.parametrize(("order", "how"), [("desc", "deleted"), ("asc", "deleted"), ("desc", "expired")])
def test_a_page_after_a_file_gone_since_the_page_before_goes_on_from_where_it_was(
    served: Live, order: str, how: str
) -> None:
    client = served.clients["alice"]
    for file in client.files.list():
        client.files.delete(file.id)
    made = [_upload(client, f"f{n}").id for n in range(6)]  # oldest first
    listed = made if order == "asc" else made[::-1]
    first, more = _page(client, order)
    assert first == listed[:2] and more
    gone = first[-1]
    if how == "deleted":
        client.files.delete(gone)
    else:
        _expire(served.db, gone)  # expired: gone for its key at once, its row swept on the worker's pass
    second, more = _page(client, order, gone)  # was a 404: no object to page after
    assert second == listed[2:4] and more
    third, more = _page(client, order, second[-1])
    assert third == listed[4:6] and not more


def test_the_sdks_auto_pagination_survives_a_delete_while_it_pages(served: Live) -> None:
    client = served.clients["alice"]
    for file in client.files.list():
        client.files.delete(file.id)
    made = [_upload(client, f"f{n}").id for n in range(6)]
    seen = []
    for n, file in enumerate(client.files.list(limit=2)):  # newest first, two a page
        seen.append(file.id)
        if n % 2 == 1:
            client.files.delete(file.id)  # the last of each page, before the SDK asks for the next
    assert seen == made[::-1]  # each once, none skipped (it raised NotFoundError on the second page)
    assert [f.id for f in client.files.list()] == [made[5], made[3], made[1]]  # the others were deleted


def test_another_keys_id_as_after_shows_none_of_its_objects(served: Live) -> None:
    alice, bob = served.clients["alice"], served.clients["bob"]
    for client in (alice, bob):
        for file in client.files.list():
            client.files.delete(file.id)
    older = _upload(bob, "b-old").id
    theirs = _upload(alice, "a").id
    newer = _upload(bob, "b-new").id
    assert [f.id for f in bob.files.list(after=theirs)] == [older]  # bob's own after that time; it was a 404
    assert [f.id for f in bob.files.list(after=theirs, order="asc")] == [newer]
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(theirs)
    with pytest.raises(openai.NotFoundError):  # an id that carries no time and names no file of bob's: as before
        bob.files.list(after="file-nothing")
    spec: dict[str, Any] = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    mine = bob.batches.create(input_file_id=older, **spec).id
    job = alice.batches.create(input_file_id=theirs, **spec).id
    later = bob.batches.create(input_file_id=newer, **spec).id
    assert [b.id for b in bob.batches.list(after=job)] == [mine]  # none of alice's jobs; it was a 404
    assert [b.id for b in bob.batches.list(after=later)] == [mine]
    assert [b.id for b in alice.batches.list()] == [job]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_the_cursor_of_a_gone_row_is_read_alike_on_both_databases(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An id carries its row's created_at to the microsecond, and a list after the id of a row deleted since
    goes on from where it was, in both orders, on SQLite and PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'x.db'}" if dialect == "sqlite" else request.getfixturevalue("fresh_postgres")
    db.upgrade(url)
    engine = db.make_async_engine(url)
    owner, now = store.Owner("k"), datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)
    try:
        rows = [await store.add_file(engine, owner, "f", b"{}\n", 1, 1 << 20, now + n * MICRO) for n in range(5)]
        ids = [row.id for row in rows]
        assert [store.id_time(i, "file-") for i in ids] == [store.utc(row.created_at) for row in rows]
        await store.delete_file(engine, ids[2], owner, now)
        newest, _ = await store.list_files(engine, owner, store.Window(2, ids[2]), now)
        oldest, _ = await store.list_files(engine, owner, store.Window(2, ids[2], ascending=True), now)
        assert [row.id for row in newest] == [ids[1], ids[0]] and [row.id for row in oldest] == [ids[3], ids[4]]
        with pytest.raises(NotFound):  # no row, no time: as before
            await store.list_files(engine, owner, store.Window(2, "file-" + "0" * 24), now)
        others, _ = await store.list_files(engine, store.Owner("other"), store.Window(2, ids[3]), now)
        assert others == []  # another key's id: none of its rows
    finally:
        await engine.dispose()
