"""Policies that limit which models a caller may use (`models`), against a running `margin serve` and an
OpenAI-like upstream over real HTTP (the `openai` SDK as client): a model the caller's policy does not list is
403 `model_not_allowed` before anything is sent (with a ledger row), a fallback outside the list is dropped, a
routed name's models are filtered, `/v1/models` lists only what the caller may use, key and team lists
intersect, and names the gateway does not have are refused where a policy is written. Before, `models` was an
unknown policy field (400) and every key could use every model."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from margin import keys
from margin.ledger import db
from tests.helpers import margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, reply_json

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _answer(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    if body.get("model") == "broken":
        reply_json(handler, 502, {"error": {"message": "down", "type": "server_error"}})
        return
    choice = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    reply_json(handler, 200, {"id": "c", "object": "chat.completion", "created": 1, "model": body["model"],
                              "choices": [choice], "usage": usage})  # fmt: skip


def _model(upstream: str, usd: str, **more: Any) -> dict[str, Any]:
    return {"backend": "up", "upstream_model": upstream, "price": {"input": usd, "output": usd, "version": "t"}, **more}


def config(upstream_url: str) -> dict[str, Any]:
    return {
        "storage": {"flush_interval_ms": 10},
        "backends": {
            "up": {
                "kind": "openai",
                "base_url": upstream_url,
                "provider": "openai",
                "timeout_s": 10,
                "retries": {"attempts": 0},
            }
        },
        "models": {
            "alpha": _model("broken", "1", fallbacks=["beta"]),  # its upstream fails: the fallback is tried
            "beta": _model("beta", "0.1", aliases=["b"]),
            "gamma": _model("gamma", "1"),
        },
        "routes": {"auto": {"policy": "lowest-cost", "ladder": ["beta", "gamma"]}},  # beta is the cheaper
        "policies": {"teams": {"search": {"models": ["alpha", "beta", "gamma", "auto"]}}},
    }


@dataclass
class Live:
    url: str
    db: Path
    bodies: list[dict[str, Any]]
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.keys[name], max_retries=0)

    def sent(self, since: int) -> list[str]:
        return [body["model"] for body in self.bodies[since:]]


def _keys(path: Path) -> dict[str, str]:
    url = f"sqlite:///{path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    specs = {
        "admin": keys.NewKey("root", is_admin=True),
        "free": keys.NewKey("free"),
        "alpha-only": keys.NewKey("alpha-only", policy={"models": ["alpha"]}),
        # the team lists alpha, beta, gamma, auto; the key gamma, auto, alpha-less: gamma and auto remain
        "team": keys.NewKey("team", team="search", policy={"models": ["gamma", "auto", "unlisted-by-team"]}),
    }
    try:
        return {name: keys.create_key(engine, spec)[1] for name, spec in specs.items()}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("models")
    bodies: list[dict[str, Any]] = []
    with http_thread(recording_handler(bodies, _answer)) as base:
        (folder / "margin.yaml").write_text(yaml.safe_dump(config(f"{base}/v1")))
        made = _keys(folder / "ledger.db")
        with margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml") as (url, _):
            yield Live(url, folder / "ledger.db", bodies, made)


def test_a_model_not_listed_is_403_before_anything_is_sent(live: Live) -> None:
    before = len(live.bodies)
    with live.client("alpha-only") as client, pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(model="gamma", messages=USER)
    error = refused.value.response.json()["error"]
    assert refused.value.status_code == 403 and error["code"] == "model_not_allowed" and error["param"] == "model"
    assert error["type"] == "permission_error" and "`alpha`" in error["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert live.sent(before) == []  # nothing reached the upstream
    row = wait_ledger_row(live.db, live.url, refused.value.response.headers["x-margin-request-id"])
    assert (row.http_status, row.error_code, row.cost_nanousd) == (403, "model_not_allowed", 0)


def test_a_fallback_outside_the_list_is_dropped(live: Live) -> None:
    before = len(live.bodies)
    with live.client("free") as client:  # no list: alpha fails, its fallback beta answers
        assert client.chat.completions.create(model="alpha", messages=USER).model == "beta"
    assert live.sent(before) == ["broken", "beta"]
    before = len(live.bodies)
    with live.client("alpha-only") as client, pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="alpha", messages=USER)
    assert failed.value.status_code == 502 and live.sent(before) == ["broken"]  # beta was never sent it


def test_routed_candidates_are_filtered_and_lists_intersect(live: Live) -> None:
    before = len(live.bodies)
    with live.client("free") as free:
        assert free.chat.completions.create(model="auto", messages=USER).model == "beta"  # the cheaper
    with live.client("team") as team:
        assert team.chat.completions.create(model="auto", messages=USER).model == "gamma"  # beta not allowed
        assert team.chat.completions.create(model="gamma", messages=USER).choices
        for model in ("beta", "b", "alpha"):  # the team lists them, the key does not: not in both
            with pytest.raises(openai.PermissionDeniedError) as refused:
                team.chat.completions.create(model=model, messages=USER)
            assert refused.value.code == "model_not_allowed", model
    assert live.sent(before) == ["beta", "gamma", "gamma"]
    with live.client("alpha-only") as client, pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="auto", messages=USER)  # auto is not listed for this key


def test_models_lists_only_what_the_caller_may_use(live: Live) -> None:
    with live.client("free") as free, live.client("team") as team, live.client("alpha-only") as alpha:
        assert {m.id for m in free.models.list()} == {"alpha", "beta", "b", "gamma", "auto"}
        assert {m.id for m in team.models.list()} == {"gamma", "auto"}
        assert {m.id for m in alpha.models.list()} == {"alpha"}
        with pytest.raises(openai.NotFoundError):
            team.models.retrieve("beta")
        assert team.models.retrieve("gamma").id == "gamma"


def test_unknown_names_are_refused_where_a_policy_is_written(live: Live, tmp_path: Path) -> None:
    admin = {"authorization": f"Bearer {live.keys['admin']}"}
    for models, hint in ((["gamma", "gamm"], "`gamm`"), (["b"], "name `beta`"), (["x"] * 257, "256")):
        body = {"name": "k", "policy": {"models": models}}
        refused = httpx.post(f"{live.url}/admin/keys", json=body, headers=admin)
        assert refused.status_code == 400 and refused.json()["error"]["param"].startswith("policy"), models
        assert hint in refused.json()["error"]["message"], refused.text
    made = httpx.post(
        f"{live.url}/admin/keys", json={"name": "k", "policy": {"models": ["auto", "beta"]}}, headers=admin
    )
    assert made.status_code == 201 and made.json()["policy"] == {"models": ["auto", "beta"]}
    bad = config("http://127.0.0.1:9/v1")
    bad["policies"] = {"tags": {"customer=acme": {"models": ["gpt-4o"]}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    check = [sys.executable, "-m", "margin", "serve", "--config", str(tmp_path / "bad.yaml"), "--port", "9"]
    started = subprocess.run(check, capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode != 0 and "policies.tags.customer=acme.models" in started.stdout + started.stderr
    cli = [sys.executable, "-m", "margin", "keys", "create", "--name", "x", "--db", str(tmp_path / "k.db")]
    cli += ["--config", str(live.db.parent / "margin.yaml"), "--policy", '{"models": ["gama"]}']
    typo = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False)
    assert typo.returncode == 2 and "`gama`" in typo.stdout + typo.stderr
