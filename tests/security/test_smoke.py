"""The attack harness itself: a gateway started with a key refuses anonymous calls and serves the key."""

from __future__ import annotations

from tests.security.conftest import ServeFactory


def test_harness_starts_a_keyed_gateway(served: ServeFactory) -> None:
    with served(keys={"admin": ["--admin"]}) as gw:
        body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
        with gw.client() as anonymous:
            assert anonymous.post("/v1/chat/completions", json=body).status_code == 401
        with gw.client(gw.keys["admin"]) as admin:
            reply = admin.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
    assert len(gw.rows()) == 1
