"""Answer-side redaction over streamed chunks: no value leaks whatever the chunking, work stays linear."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from margin.guard import PiiScanner, Redaction, redact
from margin.guard.limits import ScanBudget, ScanLimits
from margin.guard.stream import HOLD_CHARS, MAX_PENDING_CHARS, WITHHELD, StreamGuard, StreamRedactor

EMAIL = "jane.doe@example.org"
CARD = "4111 1111 1111 1111"
IBAN = "GB82 WEST 1234 5698 7654 32"
TEXT = f"Sure. Write to {EMAIL} about card {CARD}, or wire to IBAN {IBAN}; my password is hunter2-Secret9 ok."


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner(ner=False)


def run(redactor: StreamRedactor, chunks: list[str]) -> tuple[str, list[str]]:
    released = [redactor.feed(chunk) for chunk in chunks]
    released.append(redactor.flush())
    return "".join(released), released


def chop(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 25)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize("seed", range(40))
def test_no_value_leaks_whatever_the_chunking(scanner: PiiScanner, seed: int) -> None:
    out, released = run(StreamRedactor(Redaction(scanner)), chop(TEXT, random.Random(seed)))
    assert out == redact(TEXT, Redaction(scanner))  # the same as redacting the whole answer
    for secret in (EMAIL, "jane.doe", CARD, "4111 1111", IBAN, "GB82 WEST", "hunter2"):
        assert secret not in out
        assert not any(secret in piece for piece in released)


def test_token_sized_chunks_release_early(scanner: PiiScanner) -> None:
    words = ["word "] * 100
    redactor = StreamRedactor(Redaction(scanner))
    out = [redactor.feed(w) for w in words]
    assert "".join(out).count("word") >= 100 - HOLD_CHARS // 5 - 1  # only the hold is kept back
    assert "".join(out) + redactor.flush() == "word " * 100


def test_pem_key_is_held_until_its_footer(scanner: PiiScanner) -> None:
    key = (
        "-----BEGIN PRIVATE KEY-----\n"
        + "MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n" * 20
        + "-----END PRIVATE KEY-----"
    )
    text = f"Here is the key:\n{key}\nkeep it safe " + "and more words " * 20
    out, _ = run(StreamRedactor(Redaction(scanner)), [text[i : i + 7] for i in range(0, len(text), 7)])
    assert "MIIBVQ" not in out and "<SECRET_1>" in out and out.endswith("and more words ")


def test_stream_without_whitespace_is_cut_at_the_pending_bound(scanner: PiiScanner) -> None:
    redactor = StreamRedactor(Redaction(scanner))
    out = [redactor.feed("x" * 100) for _ in range(200)]
    assert len(redactor._pending) < MAX_PENDING_CHARS + 100
    assert "".join(out) + redactor.flush() == "x" * 20_000


def test_over_the_cap_the_rest_is_withheld(scanner: PiiScanner) -> None:
    redactor = StreamRedactor(Redaction(scanner, ScanBudget(ScanLimits(max_chars=500))))
    out, _ = run(redactor, ["safe words here " * 10, f"then {EMAIL} " * 50])
    assert redactor.withheld and out.endswith(WITHHELD) and EMAIL not in out


def chunk(index: int, content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**delta}
    if content is not None:
        body["content"] = content
    return {"choices": [{"index": index, "delta": body, "finish_reason": finish}]}


def collect(events: list[dict[str, Any]]) -> tuple[dict[int, str], str]:
    text = {0: "", 1: ""}
    arguments = ""
    for event in events:
        choice = event["choices"][0]
        text[choice["index"]] += choice["delta"].get("content") or ""
        for call in choice["delta"].get("tool_calls") or []:
            arguments += call["function"].get("arguments") or ""
    return text, arguments


def test_restore_per_choice_across_chunk_boundaries(scanner: PiiScanner) -> None:
    request = Redaction(scanner)
    redact(f"mail {EMAIL}", request)  # the request's <EMAIL_1>
    guard = StreamGuard(restore=request)
    events = [chunk(0, "Sending to <EMA"), chunk(1, "Choice two <EMAIL"), chunk(0, "IL_1> now"), chunk(1, "_1>!")]
    events += [chunk(0, "", "stop"), chunk(1, "", "stop")]
    for event in events:
        guard(event)
    text, _ = collect(events)
    assert text == {0: f"Sending to {EMAIL} now", 1: f"Choice two {EMAIL}!"}
    assert guard.record() == {}


def test_redact_keeps_choices_and_tool_calls_apart(scanner: PiiScanner) -> None:
    guard = StreamGuard(redact=Redaction(scanner))
    events = [
        chunk(0, "Sending to bob@exam"),
        chunk(1, "Other choice mentions bob@exam"),
        chunk(0, "ple.com now"),
        chunk(1, "ple.net too"),
        chunk(0, None, tool_calls=[{"index": 0, "function": {"name": "send", "arguments": '{"cc": "ann@ex'}}]),
        chunk(0, None, tool_calls=[{"index": 0, "function": {"arguments": 'ample.org"}'}}]),
        chunk(0, "", "tool_calls"),
        chunk(1, "", "stop"),
    ]
    for event in events:
        guard(event)
    text, arguments = collect(events)
    assert text[0] == "Sending to <EMAIL_1> now"
    assert re.fullmatch(r"Other choice mentions <EMAIL_\d> too", text[1])
    assert re.fullmatch(r'\{"cc": "<EMAIL_\d>"\}', arguments)
    assert len({text[0][11:20], text[1][22:31], arguments[8:17]}) == 3  # three values, three placeholders
    assert guard.record() == {"pii_output": {"EMAIL": 3}, "pii_output_action": "redact"}


def test_the_ledger_says_which_cap_an_answer_went_over(scanner: PiiScanner) -> None:
    """A stream withheld past `max_spans` is recorded as that, not as over `max_scan_chars` (which it was not)."""
    spans = StreamGuard(redact=Redaction(scanner, ScanBudget(ScanLimits(max_spans=3))))
    chars = StreamGuard(redact=Redaction(scanner, ScanBudget(ScanLimits(max_chars=500))))
    for guard, text in ((spans, " ".join(f"user{i}@example.com" for i in range(20))), (chars, "word " * 200)):
        for event in (chunk(0, text), chunk(0, "", "stop")):
            guard(event)
    assert "guard.max_spans" in spans.record()["pii_output_scan_limit"]
    assert "guard.max_scan_chars" in chars.record()["pii_output_scan_limit"]


def block(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": "c2ln+/=="}


def test_reasoning_is_a_channel_of_its_own_and_a_thinking_block_is_redacted_whole(scanner: PiiScanner) -> None:
    """Reasoning pieces are held back and released like content, flushed into `reasoning_content` at the finish;
    the block that repeats them is redacted with the same placeholders, its signature kept, its values not counted
    again."""
    guard = StreamGuard(redact=Redaction(scanner))
    pieces = ["They wrote from bob@exa", "mple.com and paid with ", CARD]
    events = [chunk(0, None, reasoning_content=piece) for piece in pieces]
    events += [chunk(0, None, thinking_blocks=[block("".join(pieces)), {"type": "redacted_thinking", "data": "x@y"}])]
    events += [chunk(0, "Mail ann@example.org"), chunk(0, "", "stop")]
    for event in events:
        guard(event)
    deltas = [event["choices"][0]["delta"] for event in events]
    reasoning = "".join(delta.get("reasoning_content") or "" for delta in deltas)
    assert reasoning == "They wrote from <EMAIL_1> and paid with <CREDIT_CARD_1>"
    assert "".join(delta.get("content") or "" for delta in deltas) == "Mail <EMAIL_2>"
    assert deltas[3]["thinking_blocks"] == [block(reasoning), {"type": "redacted_thinking", "data": "x@y"}]
    assert guard.record() == {"pii_output": {"CREDIT_CARD": 1, "EMAIL": 2}, "pii_output_action": "redact"}


def test_restored_reasoning_and_a_thinking_block_left_as_signed(scanner: PiiScanner) -> None:
    """`restore_pii` restores the reasoning as it does the content; a thinking block is the backend's signed text,
    sent back by the client as it got it: never restored."""
    request = Redaction(scanner)
    redact(f"mail {EMAIL}", request)
    guard = StreamGuard(restore=request)
    events = [chunk(0, None, reasoning_content="write to <EMA"), chunk(0, None, reasoning_content="IL_1>")]
    events += [chunk(0, None, thinking_blocks=[block("write to <EMAIL_1>")]), chunk(0, "", "stop")]
    for event in events:
        guard(event)
    deltas = [event["choices"][0]["delta"] for event in events]
    assert "".join(delta.get("reasoning_content") or "" for delta in deltas) == f"write to {EMAIL}"
    assert deltas[2]["thinking_blocks"] == [block("write to <EMAIL_1>")]


def test_thinking_counts_against_the_stream_s_caps(scanner: PiiScanner) -> None:
    guard = StreamGuard(redact=Redaction(scanner, ScanBudget(ScanLimits(max_chars=500))))
    events = [chunk(0, None, reasoning_content=f"then {EMAIL} " * 30), chunk(0, None, thinking_blocks=[block(EMAIL)])]
    for event in [*events, chunk(0, "", "stop")]:
        guard(event)
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas[0]["reasoning_content"] == WITHHELD and deltas[1]["thinking_blocks"] == [block(WITHHELD)]
    assert guard.withheld and "guard.max_scan_chars" in guard.record()["pii_output_scan_limit"]


def test_reasoning_in_either_key_is_redacted_each_in_its_own_channel(scanner: PiiScanner) -> None:
    """OpenRouter's and Ollama's `delta.reasoning` is redacted as `reasoning_content` is; an upstream that sends
    both keys (recent vLLM: the same text) has both redacted, each flushed into its own key at the finish."""
    guard = StreamGuard(redact=Redaction(scanner))
    pieces = ["They wrote from bob@exa", "mple.com, fine"]
    events = [chunk(0, None, reasoning=piece, reasoning_content=piece) for piece in pieces]
    events += [chunk(0, None, reasoning="only here: ann@example.org"), chunk(0, "ok", "stop")]
    for event in events:
        guard(event)
    deltas = [event["choices"][0]["delta"] for event in events]
    joined = {key: "".join(delta.get(key) or "" for delta in deltas) for key in ("reasoning_content", "reasoning")}
    assert joined == {
        "reasoning_content": "They wrote from <EMAIL_1>, fine",
        "reasoning": "They wrote from <EMAIL_1>, fineonly here: <EMAIL_2>",
    }
