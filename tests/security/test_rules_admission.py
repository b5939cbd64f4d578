"""Issue 13 §4, rules callers cannot dodge, attacked through a running `margin serve`: budgets price every
multiplier; `cap_max_tokens` caps every output field and only known fields reach an upstream; flags and
budgets hold on every candidate (routed cheap model, fallbacks); tag rules see only tags bound to the key;
two orgs' teams of the same name share no budget, rate limit or dashboard rows."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.helpers import reserved_input
from tests.security.conftest import Served, ServeFactory
from tests.security.upstream import recording_upstream
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat(model: str = "fake-chat", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


RESERVE = reserved_input(chat(max_tokens=5)) + 5  # a request's reservation: its JSON's bytes + max_tokens
FITS_ONE = RESERVE + 10  # one request of max_tokens 5 fits; none of max_tokens 100
THREE = RESERVE + 15  # three requests that each spend 6 tokens fit, a fourth does not (18 + RESERVE)


def budget_of(gw: Served, name: str) -> dict[str, Any]:
    with gw.client(gw.keys["admin"]) as admin:
        listing = admin.get("/admin/budgets").json()["data"]
    return next(b for b in listing if b["name"] == name)


def settled(gw: Served, name: str) -> dict[str, Any]:
    """The budget once no reservation is open (settling runs after the answer)."""
    for _ in range(100):
        budget = budget_of(gw, name)
        if budget["reserved"] in (0, "0.000000000"):
            return budget
        time.sleep(0.05)
    return budget_of(gw, name)


def refused(reply: httpx.Response, code: str) -> bool:
    return reply.status_code in (400, 403, 429) and reply.json()["error"]["code"] == code


def test_budgets_price_every_field_that_multiplies_work(served: ServeFactory) -> None:
    budgets = [{"name": "t-tokens", "scope": {"kind": "team", "value": "t"}, "tokens": 1000, "period": "day"}]
    with served({"budgets": budgets}, keys={"admin": ["--admin"], "k": ["--team", "t"]}) as gw:
        with gw.client(gw.keys["k"]) as client:
            attacks = [
                (CHAT, chat(n=128, max_tokens=10)),  # 128 answers of 10 tokens
                (COMPLETIONS, {"model": "fake-chat", "prompt": "hi", "best_of": 128, "max_tokens": 10}),
                (COMPLETIONS, {"model": "fake-chat", "prompt": ["hi"] * 200, "max_tokens": 5}),  # 200 prompts
                (COMPLETIONS, {"model": "fake-chat", "prompt": [7] * 1500, "max_tokens": 1}),  # token ids
                ("/v1/embeddings", {"model": "fake-embed", "input": [[7] * 1500]}),
            ]
            for path, body in attacks:
                reply = client.post(path, json=body)
                assert refused(reply, "budget_exceeded"), (body, reply.text)
                assert "1000 tokens" in reply.json()["error"]["message"]
            assert client.post(CHAT, json=chat(max_tokens=5)).status_code == 200
        budget = settled(gw, "t-tokens")
        assert 0 < budget["spent"] <= 1000


def test_every_output_field_is_capped_and_only_known_fields_reach_the_upstream(served: ServeFactory) -> None:
    with recording_upstream() as upstream:
        config = {
            "backends": {"up": {"kind": "openai", "base_url": upstream.url, "timeout_s": 10}},
            "models": {"up-chat": {"backend": "up", "price": {"input": "1", "output": "2"}}},
            "flags": [{"name": "cap", "target": {"kind": "global"}, "action": "cap_max_tokens", "max_tokens": 5}],
        }
        with served(config, keys={"k": ["--team", "t"]}) as gw, gw.client(gw.keys["k"]) as client:
            # a small max_completion_tokens used to hide a huge max_tokens from the cap
            unpriced = {"use_beam_search": True, "best_of": 8, "chat_template": "{{x}}"}
            body = chat("up-chat", max_completion_tokens=3, max_tokens=100_000, top_k=4, **unpriced)
            assert client.post(CHAT, json=body).status_code == 200
            assert client.post(CHAT, json=chat("up-chat")).status_code == 200
            # a priced tier the backend does not allow buys nothing upstream: refused, never sent or dropped
            tiered = client.post(CHAT, json={**body, "service_tier": "priority"})
            assert tiered.status_code == 400 and tiered.json()["error"]["param"] == "service_tier"
    first, second = upstream.bodies
    assert first["max_tokens"] == 5 and first["max_completion_tokens"] == 3
    assert first["top_k"] == 4 and not set(unpriced) & set(first)
    assert second["max_tokens"] == 5


FLEET = {
    "regions": {
        "eu": {"jurisdiction": "EU", "grid_zone": "FRA"},
        "us": {"jurisdiction": "US", "grid_zone": "USA"},
    },
    "backends": {
        "down": {"kind": "fake", "region": "eu", "fail_status": 502},
        "spare": {"kind": "fake", "region": "eu", "output_tokens": 3},
        "cheap-us": {"kind": "fake", "region": "us", "output_tokens": 3},
        "cheap-eu": {"kind": "fake", "region": "eu", "output_tokens": 3},
        "strong": {"kind": "fake", "region": "eu", "output_tokens": 3},
    },
    "models": {
        "primary": {"backend": "down", "fallbacks": ["fallback"], "price": {"input": "1", "output": "1"}},
        "fallback": {"backend": "spare", "price": {"input": "1", "output": "1"}},
        "cheap-us": {"backend": "cheap-us", "price": {"input": "1", "output": "1"}},
        "cheap-eu": {"backend": "cheap-eu", "price": {"input": "1", "output": "1"}},
        "strong": {"backend": "strong", "price": {"input": "9", "output": "9"}},
    },
    "routes": {  # threshold 0: the router always picks the cheap model
        "auto-us": {"ladder": ["cheap-us", "strong"], "threshold": 0.0},
        "auto-eu": {"ladder": ["cheap-eu", "strong"], "threshold": 0.0},
    },
}


def test_flags_and_residency_hold_on_every_candidate(served: ServeFactory) -> None:
    flags = [
        {"name": "fallback-off", "target": {"kind": "model", "value": "fallback"}, "action": "disable"},
        {"name": "cheap-off", "target": {"kind": "model", "value": "cheap-eu"}, "action": "disable"},
    ]
    keys = {"k": ["--team", "t"], "eu": ["--team", "t", "--policy", '{"jurisdictions": ["EU"]}']}
    with served({**FLEET, "flags": flags}, keys=keys) as gw:
        with gw.client(gw.keys["k"]) as client:
            # the primary fails: its disabled fallback must not answer instead
            failed = client.post(CHAT, json=chat("primary"))
            assert failed.status_code == 502 and failed.json()["error"]["type"] == "upstream_error"
            # the router would pick the disabled cheap model: the strong one answers
            routed = client.post(CHAT, json=chat("auto-eu"))
            assert routed.status_code == 200 and routed.json()["model"] == "strong"
        with gw.client(gw.keys["eu"]) as client:
            routed = client.post(CHAT, json=chat("auto-us"))  # the cheap model is outside the EU
            assert routed.status_code == 200 and routed.json()["model"] == "strong"
    assert {row.backend for row in gw.rows()} <= {"down", "strong"}


def test_model_budgets_of_fallbacks_are_reserved_and_charged_to_what_served(served: ServeFactory) -> None:
    budgets = [
        {"name": "fallback-cap", "scope": {"kind": "model", "value": "fallback"}, "tokens": FITS_ONE, "period": "day"},
        {"name": "primary-cap", "scope": {"kind": "model", "value": "primary"}, "tokens": 1000, "period": "day"},
    ]
    with served({**FLEET, "budgets": budgets}, keys={"admin": ["--admin"], "k": ["--team", "t"]}) as gw:
        with gw.client(gw.keys["k"]) as client:
            # the primary is down, so the fallback would serve 100 tokens past its budget
            reply = client.post(CHAT, json=chat("primary", max_tokens=100))
            assert refused(reply, "budget_exceeded") and "fallback-cap" in reply.json()["error"]["message"]
            served_by_fallback = client.post(CHAT, json=chat("primary", max_tokens=5))
            assert served_by_fallback.status_code == 200 and served_by_fallback.json()["model"] == "fallback"
        assert settled(gw, "fallback-cap")["spent"] == 4  # 1 prompt word + 3 answer tokens, charged where served
        assert settled(gw, "primary-cap")["spent"] == 0  # the primary served nothing: its hold was released


def test_tag_budgets_see_only_tags_bound_to_the_key(served: ServeFactory) -> None:
    budgets = [{"name": "acme", "scope": {"kind": "tag", "value": "customer=acme"}, "tokens": THREE, "period": "day"}]
    keys = {
        "admin": ["--admin"],
        "acme": ["--team", "a", "--tag", "customer=acme"],
        "other": ["--team", "b"],
        "broker": ["--team", "c", "--tag", "customer=*"],  # serves many customers: names one per request
    }
    acme_header = {"x-margin-tags": "customer=acme"}
    with served({"budgets": budgets}, keys=keys) as gw:
        with gw.client(gw.keys["other"]) as other:  # drain: another tenant claims to be acme
            for _ in range(6):
                assert other.post(CHAT, json=chat(max_tokens=5), headers=acme_header).status_code == 200
        assert settled(gw, "acme")["spent"] == 0
        with gw.client(gw.keys["acme"]) as acme:  # escape: acme omits the header
            statuses = [acme.post(CHAT, json=chat(max_tokens=5)).status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]  # 6 tokens each: the 4th's reservation would pass THREE
        with gw.client(gw.keys["broker"]) as broker:
            missing = broker.post(CHAT, json=chat(max_tokens=5))
            assert refused(missing, "missing_tag") and missing.json()["error"]["param"] == "x-margin-tags"
            assert refused(broker.post(CHAT, json=chat(max_tokens=5), headers=acme_header), "budget_exceeded")
            globex = broker.post(CHAT, json=chat(max_tokens=5), headers={"x-margin-tags": "customer=globex"})
            assert globex.status_code == 200
        assert settled(gw, "acme")["spent"] == 18


def test_two_orgs_teams_of_one_name_share_no_budget_limit_or_dashboard_rows(served: ServeFactory) -> None:
    config = {
        "budgets": [
            {"name": "support", "scope": {"kind": "team", "value": "support"}, "tokens": THREE, "period": "day"}
        ],
        "limits": [{"scope": {"kind": "team", "value": "support"}, "rpm": 3}],
    }
    keys = {
        "admin": ["--admin"],
        "acme": ["--team", "support", "--org", "acme"],
        "globex": ["--team", "support", "--org", "globex"],
    }
    with served(config, keys=keys) as gw:
        with gw.client(gw.keys["acme"]) as acme:
            replies = [acme.post(CHAT, json=chat(max_tokens=5)) for _ in range(4)]
            assert [r.status_code for r in replies] == [200, 200, 200, 429]  # 3 a minute; 18 tokens spent
            assert replies[-1].json()["error"]["code"] == "rate_limit_exceeded"
        with gw.client(gw.keys["globex"]) as globex:
            statuses = [globex.post(CHAT, json=chat(max_tokens=5)).status_code for _ in range(3)]
            assert statuses == [200, 200, 200]  # acme's spend and requests are not globex's
            wait_for(lambda: len(gw.rows()) == 7, "both orgs' rows in the ledger")
            view = globex.get("/dashboard/api/overview", params={"since": "24h"})
            assert view.status_code == 200 and view.json()["totals"]["requests"] == 3
        budget = settled(gw, "support")
        assert {entry["org"]: entry["spent"] for entry in budget["by_org"]} == {"acme": 18, "globex": 18}


def test_amounts_past_what_the_ledger_holds_are_caps_never_errors(served: ServeFactory) -> None:
    """A worst case past ±9e9 USD (`best_of` × prompts × `max_tokens` at $20/M: ~$1.1e10) is held at that bound,
    so a $1 budget refuses it as over budget (it was a 500: the nano-USD conversion refused it). A cap written
    as 1e12 ("unlimited") or 1e400000 counts as 9e9 USD: requests pass, and no integer of 400,000 digits is
    ever made."""
    budgets = [
        {"name": "small", "scope": {"kind": "team", "value": "t"}, "usd": "1", "period": "day"},
        {"name": "huge", "scope": {"kind": "team", "value": "u"}, "usd": "1e12", "period": "day"},
        {"name": "absurd", "scope": {"kind": "team", "value": "u"}, "usd": "1e400000", "period": "day"},
    ]
    models = {"fake-chat": {"backend": "fake", "price": {"input": "20", "output": "20"}}}
    overrides = {"budgets": budgets, "models": models}
    with served(overrides, keys={"t": ["--team", "t"], "u": ["--team", "u"]}) as gw:
        absurd = {"model": "fake-chat", "prompt": [""] * 2_048, "max_tokens": 2**31 - 1, "best_of": 128}
        with gw.client(gw.keys["t"], timeout=10) as client:
            assert refused(client.post(COMPLETIONS, json=absurd), "budget_exceeded")
            assert client.post(CHAT, json=chat(max_tokens=5)).status_code == 200
        with gw.client(gw.keys["u"], timeout=10) as client:
            assert client.post(CHAT, json=chat(max_tokens=5)).status_code == 200
