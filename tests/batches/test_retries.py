"""Which failed lines a job tries again: what may pass later (408, 409, 429, 5xx: upstream faults, timeouts, a
full queue, open circuits, `governance_unavailable`), and nothing a retry cannot change (every other 4xx, and
margin's refusals that say `x-should-retry: false`: 503 `residency_unavailable` for a key whose jurisdictions
exclude every backend of the model), which reaches the error file at its first attempt. It was tried
`max_attempts` times, with back-off, before."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from margin.app import build_app
from margin.batches.planning import options_for
from margin.batches.runner import may_pass_later
from margin.batches.store import line_request_id
from tests.batches.helpers import entries, jsonl, line, run_job
from tests.governance.conftest import bearer, make_key
from tests.helpers import fake_settings, live_server

US = {
    "regions": {"us": {"jurisdiction": "US", "grid_zone": "USA"}},
    "backends": {"us-fake": {"kind": "fake", "region": "us", "output_tokens": 3}},
    "models": {"us-only": {"backend": "us-fake", "price": {"input": "1", "output": "1"}}},
}


@pytest.mark.parametrize(
    ("status", "headers", "again"),
    [
        (400, {}, False),
        (401, {}, False),
        (403, {}, False),
        (404, {}, False),
        (413, {}, False),
        (422, {}, False),
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (429, {"retry-after": "3"}, True),
        (500, {}, True),
        (502, {}, True),
        (503, {}, True),
        (504, {}, True),
        (503, {"x-should-retry": "false"}, False),
    ],
)
def test_what_may_pass_later_is_tried_again(status: int, headers: dict[str, str], again: bool) -> None:
    assert may_pass_later(status, headers) is again


def _residency(db_path: Path, **overrides: Any) -> tuple[str, Any]:
    """A key held to the EU, and a gateway whose `us-only` model is served in the US only."""
    _, key = make_key(db_path, name="eu", team="t", policy={"jurisdictions": ["EU"]})
    return key, build_app(fake_settings(db_path, **overrides, **US))


async def test_a_residency_refusal_says_no_retry_can_change_it(db_path: Path) -> None:
    key, app = _residency(db_path)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        chat = {"model": "us-only", "messages": [{"role": "user", "content": "hi"}]}
        refused = await http.post("/v1/chat/completions", json=chat, headers=bearer(key))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "residency_unavailable"
    assert refused.headers["x-should-retry"] == "false"  # OpenAI's SDKs do not retry it either


async def test_a_line_refused_by_residency_fails_at_its_first_attempt(db_path: Path) -> None:
    key, app = _residency(db_path, batches={"poll_s": 0.02, "objective": "asap", "max_attempts": 3})
    async with live_server(app) as url:
        async with openai.AsyncOpenAI(api_key=key, base_url=f"{url}/v1", max_retries=0) as client:
            done = await run_job(client, jsonl(line("us", model="us-only")))
            assert done.status == "completed" and done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
            assert done.error_file_id is not None
            (bad,) = entries((await client.files.content(done.error_file_id)).content)
        assert bad["response"]["status_code"] == 503
        assert bad["response"]["body"]["error"]["code"] == "residency_unavailable"
        assert bad["response"]["request_id"] == line_request_id(done.id, 1, 1)  # its first: it was 3, 2 s and 4 s apart


async def test_open_circuits_within_the_jurisdictions_are_still_a_503_that_may_pass(db_path: Path) -> None:
    """The other `residency_unavailable`: compliant backends exist but fail; that one is tried again."""
    _, key = make_key(db_path, name="eu", team="t", policy={"jurisdictions": ["EU"]})
    settings = fake_settings(db_path, admission={"breaker_failures": 1}, **US)
    backends = {**settings.backends, "fake": settings.backends["fake"].model_copy(update={"fail_status": 502})}
    app = build_app(settings.model_copy(update={"backends": backends}))
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
        first = await http.post("/v1/chat/completions", json=chat, headers=bearer(key))
        assert first.status_code == 502 and "x-should-retry" not in first.headers
        again = await http.post("/v1/chat/completions", json=chat, headers=bearer(key))
        assert again.status_code == 503 and again.json()["error"]["code"] == "residency_unavailable"
        assert "x-should-retry" not in again.headers


async def test_a_line_for_a_model_the_key_may_not_use_fails_at_its_first_attempt(db_path: Path) -> None:
    """403 `model_not_allowed` (`x-should-retry: false`): final at once. Before, `models` was no policy field
    (the key's stored policy broke every request of it): the line was tried `max_attempts` times."""
    _, key = make_key(db_path, name="k", team="t", policy={"models": ["priced"]})
    app = build_app(fake_settings(db_path, batches={"poll_s": 0.02, "objective": "asap", "max_attempts": 3}))
    async with live_server(app) as url:
        async with openai.AsyncOpenAI(api_key=key, base_url=f"{url}/v1", max_retries=0) as client:
            done = await run_job(client, jsonl(line("no", model="fake-chat")))
            assert done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
            assert done.error_file_id is not None
            (bad,) = entries((await client.files.content(done.error_file_id)).content)
        assert bad["custom_id"] == "no" and bad["response"]["status_code"] == 403
        assert bad["response"]["body"]["error"]["code"] == "model_not_allowed"
        assert bad["response"]["request_id"] == line_request_id(done.id, 1, 1)  # its first attempt, its last


def test_a_jobs_plan_keeps_to_the_models_the_key_may_use(db_path: Path) -> None:
    """A routed name's equivalent models a job may be planned onto: only those the key's policy lists (a line
    moved to another would be refused); a routed name it does not list: none (its lines run and are refused)."""
    route = {"cheap": {"policy": "lowest-cost", "ladder": ["priced", "gpt-4o-mini"]}}
    settings = fake_settings(db_path, routes=route)
    targets = {name: SimpleNamespace(public=name, jurisdiction=None) for name in settings.models}
    found = options_for(settings, targets, "cheap", None)
    assert [t.public for t in found] == ["priced", "gpt-4o-mini"]
    allowed = frozenset({"cheap", "gpt-4o-mini"})
    assert [t.public for t in options_for(settings, targets, "cheap", None, allowed)] == ["gpt-4o-mini"]
    assert options_for(settings, targets, "cheap", None, frozenset({"priced"})) == []
