"""What `x-margin-cost-usd` says, in a header or in a stream's closing comment, against a running `margin
serve` over real HTTP: the ledger row's cost, digit for digit, for JSON and SSE answers, cache hits (no backend
called: $0, the row's 0) and a model at an unknown price (`unknown`, the row's NULL). Before, a stream answered
from the cache ended with `x-margin-cost-usd=unknown` while its row said 0 (and a JSON hit's header 0)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from margin.economics.money import usd_str
from tests.governance.conftest import bearer, make_key
from tests.helpers import ledger_rows, margin_serve, wait_ledger_row

CONFIG: dict[str, Any] = {
    "backends": {"fake": {"kind": "fake", "output_tokens": 4}},
    "models": {
        "priced": {"backend": "fake", "price": {"input": "0.15", "output": "0.60", "version": "t1"}},
        "unpriced": {"backend": "fake"},
    },
}


@dataclass
class Live:
    url: str
    db: Path
    key: str

    def stream(self, body: dict[str, Any]) -> tuple[str, httpx.Headers, list[str]]:
        """A streamed chat's request id, headers and SSE comment lines."""
        with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=bearer(self.key)) as answer:
            assert answer.status_code == 200
            lines = list(answer.iter_lines())
        return answer.headers["x-request-id"], answer.headers, [line for line in lines if line.startswith(":")]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("cost-headers")
    db = folder / "ledger.db"
    _, key = make_key(db, name="bot", team="search")
    (folder / "margin.yaml").write_text(yaml.safe_dump(CONFIG))
    with margin_serve(db, folder / "serve.log", config=folder / "margin.yaml", ready_s=120) as (url, _):
        yield Live(url, db, key)


def _ledger_cost(live: Live, request_id: str) -> str:
    """The row's cost as the header writes it (`unknown` for NULL)."""
    nano = wait_ledger_row(live.db, live.url, request_id).cost_nanousd
    return "unknown" if nano is None else usd_str(Decimal(nano) / Decimal(10**9)) or ""


def test_stream_and_json_costs_equal_the_ledger_row_cache_hits_included(live: Live) -> None:
    chat = {"model": "priced", "messages": [{"role": "user", "content": "what is the capital of france"}]}
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0) as client:
        miss = client.chat.completions.with_raw_response.create(**chat, temperature=0)  # type: ignore[call-overload]
        hit = client.chat.completions.with_raw_response.create(**chat, temperature=0)  # type: ignore[call-overload]
    assert miss.headers["x-margin-cache"] == "miss"
    assert miss.headers["x-margin-cost-usd"] == _ledger_cost(live, miss.request_id) != "0.000000000"
    assert hit.headers["x-margin-cache"] == "hit-exact"
    assert hit.headers["x-margin-cost-usd"] == _ledger_cost(live, hit.request_id) == "0.000000000"

    request_id, headers, comments = live.stream({**chat, "temperature": 0, "stream": True})
    assert headers["x-margin-cache"] == "hit-exact" and "x-margin-cost-usd" not in headers  # known at the end
    assert len(comments) == 1 and comments[0].startswith(": x-margin-cost-usd=0.000000000 ")
    assert _ledger_cost(live, request_id) == "0.000000000"

    request_id, headers, comments = live.stream({**chat, "stream": True})  # not deterministic: no cache
    assert "x-margin-cache" not in headers
    assert comments[0].startswith(f": x-margin-cost-usd={_ledger_cost(live, request_id)} ")
    assert _ledger_cost(live, request_id) != "0.000000000"


def test_an_unknown_price_is_unknown_in_headers_comments_and_the_row(live: Live) -> None:
    chat = {"model": "unpriced", "messages": [{"role": "user", "content": "hello"}]}
    answer = httpx.post(f"{live.url}/v1/chat/completions", json=chat, headers=bearer(live.key))
    assert answer.status_code == 200
    assert answer.headers["x-margin-cost-usd"] == _ledger_cost(live, answer.headers["x-request-id"]) == "unknown"
    request_id, _, comments = live.stream({**chat, "stream": True})
    assert comments[0].startswith(": x-margin-cost-usd=unknown ") and _ledger_cost(live, request_id) == "unknown"


def test_answers_refused_before_the_request_path_carry_cost_0_and_overhead(live: Live) -> None:
    """A bad key, a body that does not validate (the SDK's own call), a Responses body a stateless gateway
    refuses: no ledger row, and the headers every answer carries (they had the request id only)."""
    chat = {"model": "priced", "messages": [{"role": "user", "content": "hi"}]}
    stranger = openai.OpenAI(base_url=f"{live.url}/v1", api_key="sk-not-a-key", max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError) as bad_key:
        stranger.chat.completions.create(**chat)  # type: ignore[call-overload]
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as bad_body:
            client.chat.completions.create(**{**chat, "model": "x\ty"})  # type: ignore[call-overload]
        with pytest.raises(openai.BadRequestError) as stateless:
            client.responses.create(model="priced", input="hi", previous_response_id="resp_missing", store=False)
    refused = [bad_key.value.response, bad_body.value.response, stateless.value.response]
    for answer in refused:
        assert answer.status_code in (400, 401, 404), answer.text
        assert answer.headers["x-margin-request-id"] == answer.headers["x-request-id"]
        assert answer.headers["x-margin-cost-usd"] == "0.000000000"
        assert 0 <= float(answer.headers["x-margin-overhead-ms"]) < 60_000
        assert ledger_rows(live.db, answer.headers["x-request-id"]) == 0
