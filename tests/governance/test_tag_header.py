"""`x-margin-tags` holds one value per tag key, against a running `margin serve` over real HTTP with the `openai`
SDK: a key given twice is a 400 naming the header and the key, before any backend or budget sees the request.
Before, the last value won without a word: `customer=acme,customer=globex` from a key bound to `customer=*` was
labelled and budgeted as globex, while a proxy or log that read the first value saw acme."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.governance.conftest import served_with_admin
from tests.helpers import wait_ledger_row

CONFIG = {"backends": {"fake": {"kind": "fake", "output_tokens": 2}}, "models": {"fake-chat": {"backend": "fake"}}}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """(gateway URL, its SQLite ledger, a key bound to `customer=*`)."""
    with served_with_admin(tmp_path_factory.mktemp("tags"), CONFIG) as (base, url, admin):
        body = {"name": "svc", "team": "t", "tags": {"customer": "*"}}
        made = httpx.post(f"{base}/admin/keys", json=body, headers=admin)
        assert made.status_code == 201, made.text
        yield base, Path(url.removeprefix("sqlite:///")), made.json()["key"]


def _chat(base: str, key: str, tags: str) -> str:
    """The request id of an answered chat (a refusal raises the SDK's error)."""
    with openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model="fake-chat", messages=USER, max_tokens=2, extra_headers={"x-margin-tags": tags}
        ).headers["x-request-id"]


@pytest.mark.parametrize(
    ("tags", "twice"),
    [
        ("customer=acme,customer=globex", "customer"),
        ("customer=acme, feature=a, feature=b", "feature"),
        ("feature=a,customer=acme,feature=a", "feature"),  # the same value again too: one value per key
    ],
)
def test_a_tag_key_given_twice_is_refused_naming_it(served: tuple[str, Path, str], tags: str, twice: str) -> None:
    base, ledger, key = served
    with pytest.raises(openai.BadRequestError) as refused:
        _chat(base, key, tags)
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "x-margin-tags", error
    assert f"'{twice}'" in error["message"] and "twice" in error["message"], error
    row = wait_ledger_row(ledger, base, refused.value.response.headers["x-request-id"])
    assert (row.status, row.cost_nanousd or 0, row.output_tokens or 0) == ("error", 0, 0), dict(row._mapping)
    assert twice not in json.loads(row.tags), row.tags  # no value of the key was counted or labelled


def test_each_key_once_is_taken(served: tuple[str, Path, str]) -> None:
    base, ledger, key = served
    row = wait_ledger_row(ledger, base, _chat(base, key, "customer=acme, feature=search"))
    assert json.loads(row.tags) == {"customer": "acme", "feature": "search"} and row.status == "ok"
