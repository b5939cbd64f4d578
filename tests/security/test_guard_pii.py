"""Issue 13 §5, PII everywhere it flows, attacked through a running gateway whose upstream records what left
margin: tool arguments and definitions, `name`, `metadata`, `user` and `stop` are redacted before they leave;
the ledger keeps a pseudonym of `user`; PII in streamed answers (content and tool-call arguments) is redacted
even when a value is split over chunks; the caller gets their own values back when the policy restores."""

from __future__ import annotations

import json
from typing import Any

import orjson

from margin.guard.pseudonym import UserPseudonyms
from tests.security.conftest import Served, ServeFactory
from tests.security.upstream import Script, recording_upstream, upstream_config

CHAT = "/v1/chat/completions"
EMAIL = "jane.doe@example.org"
PHONE = "+44 20 7946 0958"
REDACT = ["--policy", json.dumps({"pii": "redact", "restore_pii": True})]
KEYS = {"k": ["--team", "t", "--policy", json.dumps({"pii_output": "redact"})]}


def everywhere() -> dict[str, Any]:
    """A request that carries the e-mail in every field an upstream receives (one of them JSON-escaped)."""
    arguments = '{"to": "%s", "cc": "jane.doe\\u0040example.org"}' % EMAIL  # noqa: UP031 (a JSON escape, kept)
    return {
        "model": "up",
        "user": EMAIL,
        "metadata": {"customer": EMAIL},
        "stop": [EMAIL],
        "messages": [
            {"role": "user", "name": EMAIL, "content": f"write to {EMAIL} or call {PHONE}"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "send", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": f"sent to {EMAIL}"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "send", "description": f"Sends mail, e.g. to {EMAIL}",
            "parameters": {"type": "object", "properties": {"to": {"type": "string", "default": EMAIL}}}}}],
    }  # fmt: skip


def guard_of(row: Any) -> dict[str, Any]:
    """The ledger's `guard` column (JSON text in SQLite)."""
    value = row.guard
    return dict(json.loads(value) if isinstance(value, str) else value or {})


def post(gw: Served, key: str, body: dict[str, Any]) -> dict[str, Any]:
    with gw.client(key) as client:
        reply = client.post(CHAT, json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def sse_text(gw: Served, key: str, body: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(content, tool-call arguments, raw data lines) of a streamed answer."""
    content, arguments, lines = "", "", []
    with gw.client(key) as client, client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            lines.append(line)
            for choice in orjson.loads(line[6:]).get("choices") or []:
                delta = choice.get("delta") or {}
                content += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    arguments += (call.get("function") or {}).get("arguments") or ""
    return content, arguments, lines


def test_every_string_that_leaves_is_redacted(served: ServeFactory) -> None:
    with recording_upstream(Script(pieces=["Mail <EMAIL_1> now"])) as upstream:
        with served(upstream_config(upstream), keys={"k": ["--team", "t", *REDACT]}) as gw:
            with gw.client(gw.keys["k"]) as client:
                reply = client.post(CHAT, json=everywhere())
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == f"Mail {EMAIL} now"  # restored for the caller
        seen = upstream.seen()
        assert "jane.doe" not in seen and "7946" not in seen
        body = upstream.last
        assert body["user"] == body["messages"][0]["name"] == body["metadata"]["customer"] == "<EMAIL_1>"
        assert body["stop"] == ["<EMAIL_1>"] and body["tools"][0]["function"]["name"] == "send"
        assert json.loads(body["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {
            "to": "<EMAIL_1>",
            "cc": "<EMAIL_1>",
        }
    rows = gw.rows()
    assert len(rows) == 1 and rows[0].status == "ok"
    assert rows[0].user == UserPseudonyms()(EMAIL)  # a pseudonym of the caller's value, never the value
    assert EMAIL not in json.dumps([list(r) for r in rows], default=str)
    assert guard_of(rows[0])["pii"]["PHONE"] == 1 and guard_of(rows[0])["pii_action"] == "redact"


def test_streamed_answer_pii_is_redacted_across_chunks(served: ServeFactory) -> None:
    pieces = ["Sure, she is jane.d", "oe@exam", "ple.org and her card is 4111 1111 ", "1111 1111 ", "thanks"]
    body = {"model": "up", "stream": True, "messages": [{"role": "user", "content": "who is she?"}]}
    with recording_upstream(Script(pieces=pieces)) as upstream, served(upstream_config(upstream), keys=KEYS) as gw:
        content, _, lines = sse_text(gw, gw.keys["k"], body)
        whole = post(gw, gw.keys["k"], {**body, "stream": False})
    assert content == "Sure, she is <EMAIL_1> and her card is <CREDIT_CARD_1> thanks"
    assert whole["choices"][0]["message"]["content"] == content  # the same as a whole answer
    joined = "".join(lines)
    assert "jane" not in joined and "4111" not in joined and "exam" not in joined
    rows = gw.rows()
    assert len(rows) == 2 and all(r.status == "ok" for r in rows)
    assert guard_of(rows[0]) == {"pii_output": {"CREDIT_CARD": 1, "EMAIL": 1}, "pii_output_action": "redact"}


def test_streamed_tool_call_arguments_are_redacted(served: ServeFactory) -> None:
    script = Script(tool_arguments=['{"to": "jane.', "doe@example", '.org", "note": "call ', PHONE, '"}'])
    body = {"model": "up", "stream": True, "messages": [{"role": "user", "content": "send it"}]}
    with recording_upstream(script) as upstream, served(upstream_config(upstream), keys=KEYS) as gw:
        _, arguments, lines = sse_text(gw, gw.keys["k"], body)
        whole = post(gw, gw.keys["k"], {**body, "stream": False})
    assert json.loads(arguments) == {"to": "<EMAIL_1>", "note": "call <PHONE_1>"}
    assert "jane" not in "".join(lines) and "7946" not in "".join(lines)
    call = whole["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"to": "<EMAIL_1>", "note": "call <PHONE_1>"}
    assert len(gw.rows()) == 2


def test_tool_arguments_nested_past_the_bound_are_redacted_as_one_text(served: ServeFactory) -> None:
    """The guard decodes tool-call arguments (a JSON string) to redact the strings inside and encodes them
    again: arguments nested 300 levels deep (orjson reads 1,024, writes 254; the walk recursed in Python) were
    a 500. Past the bound the arguments are redacted as one text, like arguments that are not JSON."""
    arguments = '{"a":' * 300 + json.dumps(EMAIL) + "}" * 300
    body = everywhere()
    body["messages"][1]["tool_calls"][0]["function"]["arguments"] = arguments
    with (
        recording_upstream() as upstream,
        served(upstream_config(upstream), keys={"k": ["--team", "t", *REDACT]}) as gw,
    ):
        post(gw, gw.keys["k"], body)
    sent = upstream.last["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert EMAIL not in sent and sent.startswith('{"a":' * 300), sent[-200:]
