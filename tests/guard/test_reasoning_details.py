"""OpenRouter's `reasoning_details` in the guard: a `reasoning.text` entry's `text` and a `reasoning.summary`
entry's `summary` are read like reasoning (scanned on the answer's caps, redacted in place under `pii_output:
redact`, counted once where `reasoning` repeats them), a `signature` and a `reasoning.encrypted` entry's `data`
never; over a cap the entries are dropped with the rest of the reasoning, in whole answers and in streams. In a
request sent back, the entries' texts are read as fields are, their signatures kept. Before, none of it was
read: the text reached the client unredacted, and a withheld answer still carried it."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from margin.errors import InvalidRequest
from margin.guard import PiiScanner, Redaction
from margin.guard.injection import InjectionDetector
from margin.guard.inspection import GuardPolicy, Inspector
from margin.guard.limits import ScanBudget, ScanLimits
from margin.guard.stream import WITHHELD, StreamGuard
from margin.guard.texts import answer_text, request_texts, rewrite_request
from margin.parsing import parse_request
from margin.protocol import (
    MAX_CONTENT_PARTS,
    MAX_REASONING_DETAILS,
    MAX_SIGNATURE_CHARS,
    MAX_THINKING_CHARS,
    Endpoint,
)
from margin.types import generated_text

EMAIL = "jane.doe@example.org"
CARD = "4111 1111 1111 1111"
THOUGHT = f"They wrote from {EMAIL}, so I answer there."
SUMMARY = f"Paid with {CARD}."
SIGNATURE = "c2lnbmF0dXJl+/=="
ENCRYPTED = {"type": "reasoning.encrypted", "data": f"opaque {EMAIL}", "id": "rs_1", "format": "openai-v1", "index": 2}


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner(ner=False)


def details() -> list[dict[str, Any]]:
    return [
        {
            "type": "reasoning.text",
            "text": THOUGHT,
            "signature": SIGNATURE,
            "format": "anthropic-claude-v1",
            "index": 0,
        },
        {"type": "reasoning.summary", "summary": SUMMARY, "format": "anthropic-claude-v1", "index": 1},
        dict(ENCRYPTED),
    ]


def answer(**message: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok", **message}}]}


def inspector(scanner: PiiScanner, max_chars: int = 1_000_000) -> Inspector:
    return Inspector(scanner, InjectionDetector(), ScanLimits(max_chars=max_chars))


def test_an_answer_s_details_are_redacted_in_place_and_counted(scanner: PiiScanner) -> None:
    payload = answer(reasoning_details=details())
    assert answer_text(payload) == f"ok\n{THOUGHT}\n{SUMMARY}"  # the encrypted entry and the signature: not read
    changed, record = inspector(scanner).answer_pii(payload, GuardPolicy(pii_output="redact"))
    entries = payload["choices"][0]["message"]["reasoning_details"]
    assert changed and record == {"pii_output": {"CREDIT_CARD": 1, "EMAIL": 1}, "pii_output_action": "redact"}
    assert entries == [
        {**details()[0], "text": "They wrote from <EMAIL_1>, so I answer there."},  # the signature kept
        {**details()[1], "summary": "Paid with <CREDIT_CARD_1>."},
        ENCRYPTED,  # opaque: never read
    ]


def test_details_repeating_the_reasoning_are_redacted_but_counted_once(scanner: PiiScanner) -> None:
    """OpenRouter's `reasoning` is the entries' texts joined: its values count once in the ledger."""
    text_only = [details()[0], details()[1]]
    payload = answer(reasoning=THOUGHT + SUMMARY, reasoning_details=text_only)
    assert answer_text(payload) == f"ok\n{THOUGHT}{SUMMARY}"  # the entries repeat the reasoning: read once
    changed, record = inspector(scanner).answer_pii(payload, GuardPolicy(pii_output="redact"))
    message = payload["choices"][0]["message"]
    assert changed and record == {"pii_output": {"CREDIT_CARD": 1, "EMAIL": 1}, "pii_output_action": "redact"}
    assert EMAIL not in orjson.dumps(message).decode() and CARD not in orjson.dumps(message).decode()
    assert message["reasoning_details"][0]["text"] in message["reasoning"]  # the same placeholders


def test_log_counts_the_details_and_changes_nothing(scanner: PiiScanner) -> None:
    payload = answer(reasoning_details=details())
    before = copy.deepcopy(payload)
    changed, record = inspector(scanner).answer_pii(payload, GuardPolicy(pii_output="log"))
    assert not changed and payload == before
    assert record == {"pii_output": {"CREDIT_CARD": 1, "EMAIL": 1}, "pii_output_action": "log"}


def test_a_whole_answer_over_the_caps_loses_its_details(scanner: PiiScanner) -> None:
    """The details' text counts against `max_scan_chars`; over it, the answer is withheld and they are dropped
    (encrypted ones too), never released unread."""
    long = [{"type": "reasoning.text", "text": f"to {EMAIL} " * 40}, dict(ENCRYPTED)]  # 960 characters
    for max_chars, withheld in ((2000, False), (900, True)):
        payload = answer(reasoning_details=copy.deepcopy(long))
        changed, record = inspector(scanner, max_chars).answer_pii(payload, GuardPolicy(pii_output="redact"))
        assert changed and ("pii_output_scan_limit" in record) is withheld
        message = payload["choices"][0]["message"]
        assert EMAIL not in orjson.dumps(message).decode() if withheld else "reasoning_details" in message
        if withheld:
            assert message == {"role": "assistant", "content": WITHHELD}


def chunk(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def piece(text: str, **more: Any) -> dict[str, Any]:
    return {"type": "reasoning.text", "text": text, "format": "anthropic-claude-v1", "index": 0, **more}


def test_a_stream_s_details_are_redacted_across_deltas_and_counted_once(scanner: PiiScanner) -> None:
    """Each entry index is a channel: a value split over two deltas is whole when scanned, the held-back tail
    leaves at the finish as one more entry of the same type and index; where `delta.reasoning` repeats the
    pieces (OpenRouter) their values are counted once. A signature piece and an encrypted entry pass unchanged."""
    guard = StreamGuard(redact=Redaction(scanner))
    pieces = ["They wrote from jane.doe@exa", "mple.org and paid with ", CARD]
    events = [chunk(reasoning=p, reasoning_details=[piece(p)]) for p in pieces]
    events += [chunk(reasoning_details=[piece("", signature=SIGNATURE), dict(ENCRYPTED)])]
    events += [chunk(content="ok"), chunk("stop", content="")]
    for event in events:
        guard(event)
    deltas = [event["choices"][0]["delta"] for event in events]
    entries = [entry for delta in deltas for entry in delta.get("reasoning_details") or []]
    texts = "".join(entry.get("text") or "" for entry in entries)
    assert texts == "They wrote from <EMAIL_1> and paid with <CREDIT_CARD_1>"
    assert "".join(delta.get("reasoning") or "" for delta in deltas) == texts
    assert piece("", signature=SIGNATURE) in entries and ENCRYPTED in entries
    assert entries[-1] == piece(entries[-1]["text"])  # the tail: the same type, format and index
    assert guard.record() == {"pii_output": {"CREDIT_CARD": 1, "EMAIL": 1}, "pii_output_action": "redact"}


def test_a_stream_s_details_alone_are_counted(scanner: PiiScanner) -> None:
    guard = StreamGuard(redact=Redaction(scanner))
    events = [chunk(reasoning_details=[{"type": "reasoning.summary", "summary": f"mail {EMAIL} now", "index": 0}])]
    events += [chunk("stop", content="ok")]
    for event in events:
        guard(event)
    entries = [e for event in events for e in event["choices"][0]["delta"].get("reasoning_details") or []]
    assert "".join(e["summary"] for e in entries) == "mail <EMAIL_1> now"
    assert all(e["type"] == "reasoning.summary" for e in entries)
    assert guard.record() == {"pii_output": {"EMAIL": 1}, "pii_output_action": "redact"}


def test_a_withheld_stream_drops_its_details(scanner: PiiScanner) -> None:
    """Over a cap the reasoning is withheld: every later delta's `reasoning_details` (encrypted too) is dropped,
    and no tail entry is sent at the finish."""
    guard = StreamGuard(redact=Redaction(scanner, ScanBudget(ScanLimits(max_chars=500))))
    long = f"then {EMAIL} " * 30
    events = [chunk(reasoning=long, reasoning_details=[piece(long)]), chunk(reasoning_details=[dict(ENCRYPTED)])]
    events += [chunk("stop", content="ok")]
    for event in events:
        guard(event)
    deltas = [event["choices"][0]["delta"] for event in events]
    assert guard.withheld and all("reasoning_details" not in delta for delta in deltas)
    assert EMAIL not in orjson.dumps(events).decode()


def test_entries_without_an_index_keep_to_their_own_type_s_channel(scanner: PiiScanner) -> None:
    """Two entries without an `index` in one delta (a text and a summary), then a delta with the summary only:
    its piece joins the summary's channel, not the text's (keyed by position, it landed in the text's: the
    summary's rest left at the finish as text, a value split between the two scanned as two fragments)."""
    guard = StreamGuard(redact=Redaction(scanner))
    first = [{"type": "reasoning.text", "text": "I think"}, {"type": "reasoning.summary", "summary": "mail jane"}]
    events = [chunk(reasoning_details=first), chunk(reasoning_details=[{"type": "reasoning.summary",
                                                                        "summary": ".doe@example.org"}])]  # fmt: skip
    events += [chunk("stop", content="ok")]
    for event in events:
        guard(event)
    entries = [e for event in events for e in event["choices"][0]["delta"].get("reasoning_details") or []]
    texts = "".join(e.get("text") or "" for e in entries if e["type"] == "reasoning.text")
    summaries = "".join(e.get("summary") or "" for e in entries if e["type"] == "reasoning.summary")
    assert (texts, summaries) == ("I think", "mail <EMAIL_1>")
    assert guard.record() == {"pii_output": {"EMAIL": 1}, "pii_output_action": "redact"}


def test_many_entry_indexes_cost_a_channel_each_not_a_scan_of_them_all_per_delta(
    scanner: PiiScanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile upstream giving each piece a new `index`: the guard read whether the answer was withheld by
    asking every channel, once per delta and once per tail at the finish (quadratic: 8,000 pieces held the event
    loop 6.4 s at the finish). The channels are asked now only for the ledger's record."""
    from margin.guard import stream

    asked = 0
    plain = stream._Channel.withheld

    def counted(channel: Any) -> bool:
        nonlocal asked
        asked += 1
        return bool(plain.fget(channel))  # type: ignore[attr-defined]

    monkeypatch.setattr(stream._Channel, "withheld", property(counted))
    guard = StreamGuard(redact=Redaction(scanner))
    count = 500
    for number in range(count):
        guard(chunk(reasoning_details=[piece("x", index=number)]))
    last = chunk("stop", content="ok")
    guard(last)
    assert len(last["choices"][0]["delta"]["reasoning_details"]) == count  # each entry's tail
    guard.record()
    assert asked <= 2 * count, asked


def test_a_restoring_stream_leaves_details_as_signed(scanner: PiiScanner) -> None:
    """`restore_pii` restores the reasoning, never an entry (the client sends it back as it got it)."""
    request = Redaction(scanner)
    request.placeholder("EMAIL", EMAIL)
    guard = StreamGuard(restore=request)
    event = chunk(reasoning="to <EMAIL_1>", reasoning_details=[piece("to <EMAIL_1>")])
    guard(event)
    guard(chunk("stop", content=""))
    delta = event["choices"][0]["delta"]
    assert delta["reasoning"] == f"to {EMAIL}" and delta["reasoning_details"] == [piece("to <EMAIL_1>")]


def test_generated_text_reads_the_details_only_without_reasoning() -> None:
    """Output counted without usage: the reasoning once (OpenRouter sends both), the entries where it is missing."""
    both = chunk(reasoning="abc", reasoning_details=[piece("abc")])
    alone = chunk(reasoning_details=[piece("abc"), dict(ENCRYPTED)])
    assert generated_text(both) == generated_text(alone) == "abc"


def test_a_request_s_details_texts_are_read_as_fields_their_signatures_kept() -> None:
    raw = _chat(details())
    texts = [text for _, text in request_texts(raw)]
    assert THOUGHT in texts and SUMMARY in texts
    assert SIGNATURE not in texts and ENCRYPTED["data"] not in texts
    rewritten = rewrite_request(raw, lambda text: text.replace(EMAIL, "<EMAIL_1>"))
    entries = rewritten["messages"][1]["reasoning_details"]
    assert entries[0] == {**details()[0], "text": "They wrote from <EMAIL_1>, so I answer there."}
    assert entries[2] == ENCRYPTED
    assert request_texts(raw, everything=False) == [("user", "hi"), ("assistant", "ok")]  # not in the prompt log


def _chat(entries: Any, role: str = "assistant") -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"},
                                       {"role": role, "content": "ok", "reasoning_details": entries}]}  # fmt: skip


@pytest.mark.parametrize(
    ("entries", "role", "param"),
    [
        ("not a list", "assistant", "messages.1.reasoning_details"),
        ([{"type": "reasoning.text"}] * (MAX_REASONING_DETAILS + 1), "assistant", "messages"),  # the parts' bound
        (["a string"], "assistant", "messages.1.reasoning_details.0"),
        ([{"text": "no type"}], "assistant", "messages.1.reasoning_details.0.type"),
        ([{"type": 7}], "assistant", "messages.1.reasoning_details.0.type"),
        ([{"type": "reasoning.text", "text": "x" * (MAX_THINKING_CHARS + 1)}], "assistant",
         "messages.1.reasoning_details.0.text"),
        ([{"type": "reasoning.text", "signature": "s" * (MAX_SIGNATURE_CHARS + 1)}], "assistant",
         "messages.1.reasoning_details.0.signature"),
        ([{"type": "reasoning.encrypted", "data": "d" * (MAX_THINKING_CHARS + 1)}], "assistant",
         "messages.1.reasoning_details.0.data"),
        ([{"type": "reasoning.text", "index": "0"}], "assistant", "messages.1.reasoning_details.0.index"),
        ([{"type": "reasoning.text", "text": "x"}], "user", "messages.1.reasoning_details"),
    ],
)  # fmt: skip
def test_details_sent_back_are_bounded(entries: Any, role: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, _chat(entries, role))
    assert caught.value.param == param, caught.value.message


def test_a_long_streams_unmerged_pieces_sent_back_are_taken() -> None:
    """A client that keeps each streamed piece as an entry (2,000 pieces of one reasoning) is not refused: only the
    request's content parts bound them (an earlier bound of 1,024 a message refused such a turn)."""
    pieces = [{"type": "reasoning.text", "text": "t", "index": 0}] * 2_000
    parsed = parse_request(Endpoint.CHAT, _chat(pieces))
    assert len(parsed.messages[1].reasoning_details or ()) == 2_000  # type: ignore[union-attr]


def test_details_sent_back_count_as_content_parts_and_pass_as_sent() -> None:
    parsed = parse_request(Endpoint.CHAT, _chat([*details(), {"type": "reasoning.future", "x": {"y": 1}}]))
    assert parsed.messages[1].reasoning_details is not None  # type: ignore[union-attr]
    content = [{"type": "text", "text": "x"}] * (MAX_CONTENT_PARTS - 2)
    body = _chat(details()[:2])
    body["messages"][0]["content"] = content
    parse_request(Endpoint.CHAT, body)  # 9,998 parts and 2 entries
    body["messages"][1]["reasoning_details"] = details()
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, body)
    assert caught.value.code == "array_above_max_length" and "content parts" in caught.value.message
