"""`GET /admin/keys` pages as OpenAI's lists do, against a running `margin serve` over real HTTP: `limit` (100 by
default, at most 500, as `/admin/audit`), `after` the last id of the page before, `has_more`, `first_id` and
`last_id`, in the order of the keys' ids. Before, every key came in one answer, whatever their number (and
`limit`/`after` were ignored). `margin keys list` still lists them all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from margin import keys
from margin.cli import app
from margin.ledger import db
from tests.governance.conftest import served_with_admin

CONFIG = {"backends": {"fake": {"kind": "fake"}}, "models": {"fake-chat": {"backend": "fake"}}}
MADE = 149  # with the admin key: 150, a page and a half


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, dict[str, str]]]:
    with served_with_admin(tmp_path_factory.mktemp("key-pages"), CONFIG) as (base, url, admin):
        engine = db.make_sync_engine(url)
        try:
            for number in range(MADE):
                keys.create_key(engine, keys.NewKey(f"svc-{number}", team="t"))
        finally:
            engine.dispose()
        yield base, url, admin


def _page(base: str, admin: dict[str, str], **query: Any) -> dict[str, Any]:
    answer = httpx.get(f"{base}/admin/keys", params=query, headers=admin)
    assert answer.status_code == 200, answer.text[:300]
    return dict(answer.json())


def test_the_default_page_is_100_keys_in_id_order(served: tuple[str, str, dict[str, str]]) -> None:
    base, _, admin = served
    page = _page(base, admin)
    ids = [k["id"] for k in page["data"]]
    assert len(ids) == 100 and ids == sorted(ids) and page["has_more"] is True
    assert page["object"] == "list" and (page["first_id"], page["last_id"]) == (ids[0], ids[-1])
    assert {"name", "team", "state", "created_at"} <= set(page["data"][0]) and "key" not in page["data"][0]
    rest = _page(base, admin, after=ids[-1])
    assert len(rest["data"]) == MADE + 1 - 100 and rest["has_more"] is False
    assert not {k["id"] for k in rest["data"]} & set(ids)


def test_paging_by_after_lists_every_key_once(served: tuple[str, str, dict[str, str]]) -> None:
    base, _, admin = served
    seen: list[str] = []
    after: str | None = None
    for _ in range(100):
        page = _page(base, admin, limit=7, **({"after": after} if after else {}))
        assert len(page["data"]) <= 7
        seen += [k["id"] for k in page["data"]]
        after = page["last_id"]
        if not page["has_more"]:
            break
    assert len(seen) == MADE + 1 and seen == sorted(set(seen))
    whole = _page(base, admin, limit=500)
    assert [k["id"] for k in whole["data"]] == seen and whole["has_more"] is False
    assert _page(base, admin, after=seen[-1]) == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False
    }  # fmt: skip


def test_a_cursor_of_a_key_that_is_not_there_still_pages(served: tuple[str, str, dict[str, str]]) -> None:
    """`after` is a place in the order, not a row: an id that never existed pages on from where it would be."""
    base, _, admin = served
    every = [k["id"] for k in _page(base, admin, limit=500)["data"]]
    between = every[10] + "0"  # sorts right after every[10]: no key has 9 characters
    assert [k["id"] for k in _page(base, admin, after=between, limit=3)["data"]] == every[11:14]


BAD_QUERIES = [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"), ({"after": "x" * 33}, "after"),
    ({"after": "a\tb"}, "after"), ({"cursor": "abc"}, "cursor"), ({"order": "asc"}, "order"),
]  # fmt: skip


@pytest.mark.parametrize(("query", "param"), BAD_QUERIES)
def test_a_bad_page_query_is_refused(
    served: tuple[str, str, dict[str, str]], query: dict[str, str], param: str
) -> None:
    base, _, admin = served
    answer = httpx.get(f"{base}/admin/keys", params=query, headers=admin)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text[:300]


def test_the_cli_still_lists_every_key(served: tuple[str, str, dict[str, str]]) -> None:
    base, url, admin = served
    listed = CliRunner().invoke(app, ["keys", "list", "--json", "--db", url.removeprefix("sqlite:///")])
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.output)) == MADE + 1 == len(_page(base, admin, limit=500)["data"])
