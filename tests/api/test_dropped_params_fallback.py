"""`x-margin-dropped-params` describes the backend that answered, and only it: an `anthropic` backend with
`drop_unsupported` leaves `seed` out of the request it builds (and notes it), its fake Anthropic upstream fails
(500, then the route falls back), and an OpenAI-compatible upstream, which takes `seed`, answers. Against a
running `margin serve` over real HTTP, the official openai SDK as the client, JSON and streamed. Before: the
fallback's answer still named the first backend's drops."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.api.compat_upstream import Upstream as CompatUpstream
from tests.api.compat_upstream import compat_upstream
from tests.api.test_anthropic_backend import KEY_ENV, UPSTREAM_KEY
from tests.backends.anthropic_upstream import Upstream, anthropic_upstream
from tests.helpers import margin_serve, wait_ledger_row

HEADER = "x-margin-dropped-params"
HI: Any = [{"role": "user", "content": "hi"}]
PRICE = {"input": "1", "output": "2"}
NO_CACHE = {"x-margin-cache": "off"}  # a seed makes a request cacheable: every one here reaches its backends


@dataclass
class Live:
    url: str
    db: Path
    anthropic: Upstream
    compat: CompatUpstream
    client: openai.OpenAI


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("dropped-fallback")
    with anthropic_upstream() as claude, compat_upstream() as compat, pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, UPSTREAM_KEY)
        dropping = {"kind": "anthropic", "base_url": claude.url, "api_key_env": KEY_ENV, "timeout_s": 10,
                    "retries": {"attempts": 0}, "drop_unsupported": ["seed"]}  # fmt: skip
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {
                "claude": dropping,
                "up": {"kind": "openai", "base_url": compat.url, "retries": {"attempts": 0}},
            },
            "models": {
                "falls": {"backend": "claude", "upstream_model": "broken", "price": PRICE, "fallbacks": ["compat"]},
                "answers": {"backend": "claude", "upstream_model": "claude-haiku-4-5", "price": PRICE},
                "compat": {"backend": "up", "upstream_model": "plain", "price": PRICE},
            },
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
            try:
                yield Live(url, folder / "ledger.db", claude, compat, client)
            finally:
                client.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_fallback_s_answer_names_no_drops_of_the_backend_that_failed(live: Live, stream: bool) -> None:
    tried, answered = len(live.anthropic.bodies), len(live.compat.bodies)
    with live.client.chat.completions.with_streaming_response.create(
        model="falls", messages=HI, seed=7, max_tokens=8, stream=stream, extra_headers=NO_CACHE
    ) as raw:
        assert raw.status_code == 200
        headers, text = raw.headers, raw.text()
    assert len(live.anthropic.bodies) == tried + 1 and "seed" not in live.anthropic.last  # dropped there…
    assert len(live.compat.bodies) == answered + 1 and live.compat.bodies[-1]["seed"] == 7  # …sent here
    assert HEADER not in headers, headers[HEADER]  # the fallback dropped nothing
    row = wait_ledger_row(live.db, live.url, headers["x-request-id"])
    assert (row.model, row.backend, row.http_status) == ("compat", "up", 200)
    assert "chatcmpl-up" in text  # the compat upstream's answer


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_backend_that_drops_and_answers_still_says_so(live: Live, stream: bool) -> None:
    with live.client.chat.completions.with_streaming_response.create(
        model="answers", messages=HI, seed=7, max_tokens=8, stream=stream, extra_headers=NO_CACHE
    ) as raw:
        assert raw.status_code == 200 and raw.headers[HEADER] == "seed"
        assert "hello" in raw.text()
    assert "seed" not in live.anthropic.last
