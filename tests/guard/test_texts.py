"""Every string that leaves for an upstream is visited; structure a placeholder would break is not."""

from __future__ import annotations

from typing import Any

import orjson

from margin.guard import PiiScanner, Redaction, redact
from margin.guard.texts import FIELD, answer_text, request_texts, rewrite_answer, rewrite_request

EMAIL = "jane.doe@example.org"
ESCAPED = '{"to": "jane.doe\\u0040example.org"}'  # the e-mail with its @ as a JSON escape


def tool_request() -> dict[str, Any]:
    return {
        "model": "m",
        "user": EMAIL,
        "metadata": {"customer": EMAIL, "nested": {"deep": [EMAIL]}},
        "stop": [EMAIL],
        "messages": [
            {"role": "system", "content": f"Support for {EMAIL}"},
            {"role": "user", "name": EMAIL, "content": [{"type": "text", "text": f"hi {EMAIL}"},
                                                         {"type": "image_url", "image_url": {"url": "https://x/a@b.c"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "lookup", "arguments": orjson.dumps({"email": EMAIL, "name": "Jane"}).decode()}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": f"found {EMAIL}"},
            {"role": "assistant", "function_call": {"name": "old", "arguments": ESCAPED}},
        ],
        "tools": [{"type": "function", "function": {
            "name": "lookup", "description": f"Looks up users such as {EMAIL}",
            "parameters": {"type": "object", "properties": {"email": {"type": "string", "format": "email",
                           "pattern": "^.+@.+$", "enum": [EMAIL], "default": EMAIL}}, "required": ["email"]}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {
            "type": "object", "description": f"reply to {EMAIL}"}}},
        "vendor_extension": {"note": EMAIL},
    }  # fmt: skip


def test_redaction_reaches_every_string_that_leaves() -> None:
    state = Redaction(PiiScanner(ner=False))
    out = rewrite_request(tool_request(), lambda text: redact(text, state))
    assert EMAIL not in orjson.dumps(out).decode()
    assert "jane.doe\\u0040example.org" not in orjson.dumps(out).decode()  # escapes hide nothing
    assert out["user"] == out["messages"][1]["name"] == out["metadata"]["customer"] == "<EMAIL_1>"
    assert out["metadata"]["nested"] == {"deep": ["<EMAIL_1>"]} and out["stop"] == ["<EMAIL_1>"]
    arguments = orjson.loads(out["messages"][2]["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"email": "<EMAIL_1>", "name": "Jane"}
    assert orjson.loads(out["messages"][4]["function_call"]["arguments"]) == {"to": "<EMAIL_1>"}
    schema = out["tools"][0]["function"]["parameters"]["properties"]["email"]
    assert schema["enum"] == ["<EMAIL_1>"] and schema["default"] == "<EMAIL_1>"
    assert out["response_format"]["json_schema"]["schema"]["description"] == "reply to <EMAIL_1>"
    assert out["vendor_extension"] == {"note": "<EMAIL_1>"}


def test_structure_is_left_alone() -> None:
    state = Redaction(PiiScanner(ner=False))
    original = tool_request()
    out = rewrite_request(original, lambda text: redact(text, state))
    call = out["messages"][2]["tool_calls"][0]
    assert (call["id"], call["type"], call["function"]["name"]) == ("call_1", "function", "lookup")
    assert out["messages"][3]["tool_call_id"] == "call_1"
    assert out["tools"][0]["function"]["name"] == "lookup" and out["tool_choice"] == original["tool_choice"]
    email_schema = out["tools"][0]["function"]["parameters"]["properties"]["email"]
    assert (email_schema["format"], email_schema["pattern"]) == ("email", "^.+@.+$")
    assert out["tools"][0]["function"]["parameters"]["required"] == ["email"]
    assert out["messages"][1]["content"][1] == original["messages"][1]["content"][1]  # images are not read
    assert original == tool_request()  # the caller's JSON is not changed in place


def test_a_prediction_and_the_upstream_hints_are_read_but_their_enums_are_not() -> None:
    """A Predicted Output's text and the cache and safety identifiers leave for an `openai` upstream: redacted
    like any string. `verbosity` and the prompt-cache retention and options are enums a placeholder would
    break (the request is parsed again after a redaction): structure."""
    raw = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "prediction": {"type": "content", "content": [{"type": "text", "text": f"to: {EMAIL}"}]},
        "prompt_cache_key": EMAIL,
        "safety_identifier": EMAIL,
        "verbosity": "low",
        "prompt_cache_retention": "in_memory",
        "prompt_cache_options": {"mode": "explicit", "ttl": "30m"},
    }
    out = rewrite_request(raw, lambda text: text.upper())
    assert out["prediction"] == {"type": "content", "content": [{"type": "text", "text": f"TO: {EMAIL.upper()}"}]}
    assert out["prompt_cache_key"] == out["safety_identifier"] == EMAIL.upper()
    kept = ("verbosity", "prompt_cache_retention", "prompt_cache_options")
    assert {name: out[name] for name in kept} == {name: raw[name] for name in kept}


def test_unchanged_request_is_returned_as_is() -> None:
    raw = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "tools": [{"type": "function"}]}
    assert rewrite_request(raw, lambda text: text) is raw


def test_request_texts_roles_and_conversation_only() -> None:
    texts = request_texts(tool_request())
    assert ("user", f"hi {EMAIL}") in texts and ("tool", f"found {EMAIL}") in texts
    assert (FIELD, EMAIL) in texts  # user, name, metadata…
    conversation = request_texts(tool_request(), everything=False)
    assert all(where != FIELD for where, _ in conversation)
    assert [t for _, t in conversation] == [f"Support for {EMAIL}", f"hi {EMAIL}", f"found {EMAIL}"]
    assert request_texts({"model": "m", "prompt": ["a", "b"], "input": [1, 2]}) == [("user", "a"), ("user", "b")]


def test_answers_with_tool_calls() -> None:
    payload: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "send", "arguments": '{"to": "<EMAIL_1>"}'}}
    ]}}]}  # fmt: skip
    assert answer_text(payload) == "<EMAIL_1>"
    assert rewrite_answer(payload, lambda text: text.replace("<EMAIL_1>", EMAIL))
    assert orjson.loads(payload["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == {"to": EMAIL}
    assert not rewrite_answer(payload, lambda text: text)


def test_an_answer_s_thinking_is_read_and_its_blocks_rewritten_only_on_request() -> None:
    """`reasoning_content` is read and rewritten like content (a restore reaches it); a thinking block's text is
    rewritten only through `thinking` (the redaction, never the restore: the block is signed), read for counting
    only when it does not repeat the reasoning; a signature and a redacted block's data are never read."""
    blocks = [{"type": "thinking", "thinking": f"to {EMAIL}", "signature": f"{EMAIL}=="},
              {"type": "redacted_thinking", "data": EMAIL}]  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": "ok", "reasoning_content": f"to {EMAIL}",
                               "thinking_blocks": blocks}  # fmt: skip
    payload: dict[str, Any] = {"choices": [{"message": message}]}
    assert answer_text(payload) == f"ok\nto {EMAIL}"  # the block repeats the reasoning: read once
    assert rewrite_answer(payload, lambda text: text.replace(EMAIL, "<EMAIL_1>"))
    assert message["reasoning_content"] == "to <EMAIL_1>" and message["thinking_blocks"][0]["thinking"] == f"to {EMAIL}"
    assert answer_text(payload) == f"ok\nto <EMAIL_1>\nto {EMAIL}"  # no longer a repeat: read
    seen: list[tuple[str, bool]] = []

    def thinking(text: str, new: bool) -> str:
        seen.append((text, new))
        return "x"

    assert rewrite_answer(payload, lambda text: text, thinking)
    assert seen == [(f"to {EMAIL}", True)]
    assert message["thinking_blocks"] == [{**blocks[0], "thinking": "x"}, {"type": "redacted_thinking", "data": EMAIL}]
    assert message["thinking_blocks"][0]["signature"] == f"{EMAIL}=="


def test_answers_of_odd_shape_have_nothing_to_read_or_rewrite() -> None:
    """An upstream's answer is forwarded whatever its shape: `choices` that are not a list of objects hold no
    text for the guards, and rewriting them changes nothing (never an exception)."""
    from margin.guard.inspection import _withhold
    from margin.guard.stream import StreamGuard

    scanner = PiiScanner()
    guard = StreamGuard(redact=Redaction(scanner))
    for choices in (5, "abc", 1.5, True, {"a": 1}, ["x", None, 7]):
        payload = {"id": "x", "choices": choices}
        assert answer_text(payload) == ""
        assert rewrite_answer(payload, lambda text: "changed") is False
        assert guard(payload) is False
        _withhold(payload)
        assert payload == {"id": "x", "choices": choices}


def test_a_whole_answer_over_the_caps_loses_its_thinking_too() -> None:
    """Under `pii_output: redact` a whole answer whose thinking takes it past `max_scan_chars` is withheld: its
    reasoning and thinking blocks are dropped, never released unread (the repeated block's text counts too)."""
    from margin.guard.injection import InjectionDetector
    from margin.guard.inspection import GuardPolicy, Inspector
    from margin.guard.limits import ScanLimits
    from margin.guard.stream import WITHHELD

    thinking = f"to {EMAIL} " * 10  # 240 characters, read twice: 480
    for max_chars, withheld in ((500, False), (400, True)):
        message = {"role": "assistant", "content": "ok", "reasoning_content": thinking,
                   "thinking_blocks": [{"type": "thinking", "thinking": thinking, "signature": "s"}]}  # fmt: skip
        payload: dict[str, Any] = {"choices": [{"message": message}]}
        inspector = Inspector(PiiScanner(ner=False), InjectionDetector(), ScanLimits(max_chars=max_chars))
        changed, record = inspector.answer_pii(payload, GuardPolicy(pii_output="redact"))
        assert changed and EMAIL not in orjson.dumps(payload).decode()
        assert ("pii_output_scan_limit" in record) is withheld
        if withheld:
            assert message == {"role": "assistant", "content": WITHHELD}
        else:
            assert record == {"pii_output": {"EMAIL": 10}, "pii_output_action": "redact"}


def test_an_answer_s_reasoning_in_either_key_is_rewritten_and_read_once() -> None:
    """OpenRouter's and Ollama's `reasoning` is rewritten as `reasoning_content` is (both reach a chat client);
    where an upstream sends both, the text is read once for counting."""
    message: dict[str, Any] = {"role": "assistant", "content": "ok", "reasoning": f"to {EMAIL}"}
    payload: dict[str, Any] = {"choices": [{"message": message}]}
    assert answer_text(payload) == f"ok\nto {EMAIL}"
    message["reasoning_content"] = f"to {EMAIL}"
    assert answer_text(payload) == f"ok\nto {EMAIL}"  # the same reasoning twice: read once
    assert rewrite_answer(payload, lambda text: text.replace(EMAIL, "<EMAIL_1>"))
    assert message["reasoning"] == message["reasoning_content"] == "to <EMAIL_1>"


def test_an_empty_or_different_reasoning_content_does_not_hide_reasoning() -> None:
    """Both keys reach a chat client: an empty `reasoning_content` beside a `reasoning` hid its text from the
    guard's reading (`pii_output: log` missed it; the scan-size check undercounted it), and so did two texts that
    differ. Only the same text twice is read once."""
    message: dict[str, Any] = {"role": "assistant", "content": "ok", "reasoning_content": "", "reasoning": EMAIL}
    payload: dict[str, Any] = {"choices": [{"message": message}]}
    assert EMAIL in answer_text(payload)
    message["reasoning_content"] = "something else"
    assert EMAIL in answer_text(payload) and "something else" in answer_text(payload)


def test_a_withheld_answer_keeps_nothing_of_its_blocks() -> None:
    """A withheld answer loses its thinking blocks and, since interleaved answers carry it, their `block_order`
    (which told the blocks' layout and lengths)."""
    from margin.guard.inspection import _withhold

    message: dict[str, Any] = {
        "role": "assistant",
        "content": "secret",
        "thinking_blocks": [{"type": "thinking", "thinking": "x", "signature": "s"}],
        "block_order": [{"type": "thinking"}, {"type": "text", "chars": 6}],
    }
    _withhold({"choices": [{"message": message}]})
    assert "thinking_blocks" not in message and "block_order" not in message and "secret" not in str(message)
