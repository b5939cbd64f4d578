"""`margin serve --workers 2`, no Redis configured, the semantic cache on (the real MiniLM encoder): a question
answered by one worker is a semantic hit on the other (its addition travels through the supervisor's embedded
cache Redis), and the sharing keeps the identifier rule: another order number is never served from it. And two
replicas on one Redis: one started after the other answered back-fills that answer from the stream."""

from __future__ import annotations

import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import margin_serve
from tests.security.conftest import Served, ServeFactory
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
SEMANTIC = {"cache": {"semantic": {"enabled": True, "delta": 0.05}}}


def chat(content: str) -> dict[str, Any]:
    return {"model": "fake-chat", "temperature": 0, "messages": [{"role": "user", "content": content}]}


def on_worker(gw: Served, want: Any, timeout_s: float = 30) -> tuple[httpx.Client, int]:
    """A fresh connection (the kernel spreads them over the workers) to a worker whose pid `want(pid)` accepts;
    the caller closes it. One keep-alive connection: one worker answers everything sent on it."""
    admin = {"authorization": f"Bearer {gw.keys['admin']}"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client = gw.client(gw.keys["alice"], timeout=120)
        pid = int(client.get("/healthz", headers=admin).json()["pid"])
        if want(pid):
            return client, pid
        client.close()
    raise AssertionError("no connection reached the worker wanted")


def ask(client: httpx.Client, content: str) -> str:
    reply = client.post(CHAT, json=chat(content))
    assert reply.status_code == 200, reply.text
    return str(reply.headers.get("x-margin-cache", ""))


def test_a_semantic_entry_stored_by_one_worker_is_a_hit_on_the_other(served: ServeFactory) -> None:
    keys = {"admin": ["--admin", "--team", "ops"], "alice": ["--team", "t"]}
    with served(SEMANTIC, keys=keys, extra=["--workers", "2"]) as gw:
        seen: set[int] = set()

        def both_up() -> bool:
            client, pid = on_worker(gw, lambda _: True)
            client.close()
            seen.add(pid)
            return len(seen) == 2

        wait_for(both_up, "both workers", timeout_s=60)
        first, stored_by = on_worker(gw, lambda _: True)
        with closing(first):
            assert ask(first, "What is the status of order 48213?") == "miss"
        other, answered_by = on_worker(gw, lambda pid: pid != stored_by)
        with closing(other):
            assert answered_by != stored_by
            # another worker, another order number: never served (the identifier rule holds on shared entries)
            assert ask(other, "What is the status of order 48214?") == "miss"
            # the same question in other casing (not an exact hit): answered from the first worker's entry
            assert ask(other, "what is the status of order 48213?") == "hit-semantic"


def test_a_replica_started_later_back_fills_what_another_stored(
    served: ServeFactory, redis_url: str, tmp_path: Path
) -> None:
    team = f"t-{uuid.uuid4().hex[:8]}"  # the session's Redis is shared: a team of its own, entries of its own
    config = {**SEMANTIC, "storage": {"flush_interval_ms": 10, "redis": redis_url}}
    with served(config, keys={"alice": ["--team", team]}) as one:
        with one.client(one.keys["alice"], timeout=120) as client:
            assert ask(client, "What is the status of order 48213?") == "miss"
        with margin_serve(one.db, tmp_path / "two.log", config=one.config, ready_s=60) as (url, _):
            auth = {"authorization": f"Bearer {one.keys['alice']}"}
            with httpx.Client(base_url=url, headers=auth, timeout=120) as two:
                assert ask(two, "what is the status of order 48213?") == "hit-semantic"
