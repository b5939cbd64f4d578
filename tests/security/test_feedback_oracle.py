"""Feedback is no oracle for other keys' request ids: against a running gateway, a key that posts an outcome for
another key's request gets exactly the answer it gets for an id that does not exist (it was 403 against 404, so
any key could test whether an id it had seen or guessed was real), a batch holding one such id writes nothing,
and an admin key still grades any request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.security.conftest import Served, ServeFactory

CHAT = "/v1/chat/completions"
FEEDBACK = "/v1/margin/feedback"
HI = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def gw(served: ServeFactory) -> Iterator[Served]:
    with served(keys={"admin": ["--admin"], "alice": [], "bob": []}) as running:
        yield running


def _ask(gw: Served, key: str) -> str:
    with gw.client(gw.keys[key]) as client:
        answer = client.post(CHAT, json=HI)
    assert answer.status_code == 200, answer.text[:300]
    return answer.headers["x-margin-request-id"]


def _error_without(response: Any, request_id: str) -> tuple[int, dict[str, Any]]:
    error = dict(response.json()["error"])
    error["message"] = error["message"].replace(request_id, "<id>")
    return response.status_code, error


def test_another_keys_request_is_answered_as_one_that_does_not_exist(gw: Served) -> None:
    alices, bobs = _ask(gw, "alice"), _ask(gw, "bob")
    absent = alices[:-6] + ("000000" if not alices.endswith("000000") else "111111")  # same shape, no such row
    with gw.client(gw.keys["bob"]) as bob:
        foreign = bob.post(FEEDBACK, json={"request_id": alices, "success": True})
        missing = bob.post(FEEDBACK, json={"request_id": absent, "success": True})
        assert _error_without(foreign, alices) == _error_without(missing, absent)
        assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "request_id"
        batch = [{"request_id": bobs, "success": True}, {"request_id": alices, "success": False}]
        both = bob.post(FEEDBACK, json=batch)
        assert both.status_code == 404  # all or nothing: bob's own outcome is not written either
    assert gw.rows("feedback") == []
    with gw.client(gw.keys["admin"]) as admin:
        graded = admin.post(FEEDBACK, json={"request_id": alices, "success": True})
    assert graded.status_code == 200, graded.text[:300]
    assert [row.request_id for row in gw.rows("feedback")] == [alices]
