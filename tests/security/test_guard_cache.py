"""Issue 13 §4 (org-qualified cache scopes) and §5 (the semantic cache) attacked through a running gateway
with the real MiniLM encoder: two orgs' teams named `support` share no entry; a question that differs only in
an order number or a name is never answered from another caller's entry; one team flooding the semantic cache
cannot evict another team's entries; only admin keys see how similar a hit was."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.security.conftest import Served, ServeFactory

CHAT = "/v1/chat/completions"
# δ = 0.05 (cosine ≥ 0.94): "order 48213" vs "order 48214" is 0.98 and "Jon Smith" vs "John Smith" 0.95 with
# MiniLM, so without the identifier rule both would be served from the other caller's entry
SEMANTIC = {"cache": {"semantic": {"enabled": True, "delta": 0.05, "max_entries": 8, "max_entries_per_tenant": 4}}}


def chat(content: str) -> dict[str, Any]:
    return {"model": "fake-chat", "temperature": 0, "messages": [{"role": "user", "content": content}]}


def ask(gw: Served, key: str, content: str) -> tuple[str, dict[str, str]]:
    with gw.client(gw.keys[key], timeout=120) as client:
        reply = client.post(CHAT, json=chat(content))
    assert reply.status_code == 200, reply.text
    return reply.headers.get("x-margin-cache", ""), dict(reply.headers)


def wait_rows(gw: Served, count: int) -> list[Any]:
    """The ledger rows once `count` of them are written (the gateway writes in batches every 10 ms)."""
    deadline = time.monotonic() + 10
    while len(rows := gw.rows()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


def test_teams_with_the_same_name_in_two_orgs_share_nothing(served: ServeFactory) -> None:
    keys = {
        "acme": ["--org", "acme", "--team", "support"],
        "acme2": ["--org", "acme", "--team", "support"],
        "globex": ["--org", "globex", "--team", "support"],
    }
    with served(keys=keys) as gw:
        assert ask(gw, "acme", "what is our refund policy")[0] == "miss"
        assert ask(gw, "globex", "what is our refund policy")[0] == "miss"  # another org: its own entry
        assert ask(gw, "acme2", "what is our refund policy")[0] == "hit-exact"  # same org and team: shared
    rows = gw.rows()
    assert [r.kind for r in rows] == ["request", "request", "cache_hit"]
    assert [r.org for r in rows] == ["acme", "globex", "acme"]


@pytest.fixture
def semantic_gateway(served: ServeFactory) -> Any:
    keys = {"admin": ["--admin", "--team", "ops"], "alice": ["--team", "t"], "bob": ["--team", "t"]}
    keys |= {"flood": ["--team", "flood"]}
    with served(SEMANTIC, keys=keys) as gw:
        yield gw


def test_semantic_cache_never_crosses_identifiers(semantic_gateway: Served) -> None:
    gw = semantic_gateway
    assert ask(gw, "alice", "What is the status of order 48213?")[0] == "miss"
    assert ask(gw, "alice", "Send the invoice to customer Jon Smith")[0] == "miss"
    # the same team, the same question about someone else's order / someone else: never served
    assert ask(gw, "bob", "What is the status of order 48214?")[0] == "miss"
    assert ask(gw, "bob", "Send the invoice to customer John Smith")[0] == "miss"
    # control: the same question in other casing is answered from the cache (semantic, not exact)
    state, headers = ask(gw, "bob", "what is the status of order 48213?")
    assert state == "hit-semantic"
    assert "x-margin-cache-similarity" not in headers  # a non-admin learns nothing about the distance
    assert [r.kind for r in wait_rows(gw, 5)] == ["request"] * 4 + ["cache_hit"]


def test_semantic_cache_never_swaps_units_or_drops_a_negation(semantic_gateway: Served) -> None:
    """MiniLM puts "convert 5 miles to km" and "convert 5 km to miles" at cosine 0.99, and a question and its
    negation close too: both held the same number (or none), so the second was served the first's answer (a wrong
    conversion, the opposite advice). The word a number counts, and a negation, are identifiers now."""
    gw = semantic_gateway
    assert ask(gw, "alice", "convert 5 miles to km")[0] == "miss"
    assert ask(gw, "alice", "Is it safe to eat raw chicken?")[0] == "miss"
    assert ask(gw, "bob", "convert 5 km to miles")[0] == "miss"  # before: hit-semantic
    assert ask(gw, "bob", "Is it not safe to eat raw chicken?")[0] == "miss"
    assert ask(gw, "bob", "convert 5 miles to km please")[0] == "hit-semantic"  # control: the same question
    assert [r.kind for r in wait_rows(gw, 5)] == ["request"] * 4 + ["cache_hit"]


def test_similarity_header_for_admins_only_and_tenant_quota(semantic_gateway: Served) -> None:
    gw = semantic_gateway
    assert ask(gw, "alice", "How do I rotate the API keys of our service?")[0] == "miss"
    for i in range(10):  # another team floods the semantic store (global max 8, 4 per tenant)
        assert ask(gw, "flood", f"Filler question number {i} about topic {i * 7}?")[0] == "miss"
    assert ask(gw, "bob", "how do i rotate the api keys of our service?")[0] == "hit-semantic"  # survived
    assert ask(gw, "admin", "How do I rotate the API keys of our service?")[0] == "miss"  # other team
    state, headers = ask(gw, "admin", "how do i rotate the api keys of our service?")
    assert state == "hit-semantic" and 0.9 < float(headers["x-margin-cache-similarity"]) <= 1.0001
    assert len(wait_rows(gw, 14)) == 14
