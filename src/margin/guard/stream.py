"""Guards for streamed answers: PII redaction over chunks that may split a value anywhere, and the channels
of an OpenAI stream (each choice's content or text, and each tool call's arguments) kept apart.

`StreamRedactor` releases text only up to a whitespace at least `HOLD_CHARS` characters before the end of what
it has seen, so a value still arriving (an e-mail, a grouped card or IBAN number, `password is …`) is whole
when it is scanned; the last `CONTEXT_CHARS` released characters are scanned again with the rest as context
(a credential word before its value) but never re-emitted. An unterminated PEM header holds everything after
it until its footer arrives or `MAX_PENDING_CHARS` is reached. A stream that delivers no whitespace for
`MAX_PENDING_CHARS` characters is cut there. Cost: each release rescans at most `HOLD_CHARS + CONTEXT_CHARS`
characters besides the released ones, so the work is linear in the answer. Only the values a window releases
count against the answer's `guard.max_spans` (a value read again as context is not counted again); each window's
scan is bounded by what is left of it (`ScanBudget.window`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from margin.guard.limits import ScanLimitExceeded
from margin.guard.redaction import Redaction, StreamRestorer, redact
from margin.guard.spans import Span
from margin.guard.texts import thinking_blocks
from margin.thinking import DETAIL_TEXT_KEYS, REASONING_DETAILS, REASONING_KEYS, detail_texts, repeats_reasoning
from margin.types import choices_of

HOLD_CHARS = 64
CONTEXT_CHARS = 64
MAX_PENDING_CHARS = 9000
THINKING = "thinking"  # a choice's channel for its thinking blocks (its reasoning's: the key, REASONING_KEYS)
DETAILS = REASONING_DETAILS  # a choice's channels for its `reasoning_details` entries, one per entry index
WITHHELD = "[margin: the rest of this answer is withheld: it is over the guard's scan limit]"
_WHITESPACE = (" ", "\n", "\t", "\r")
_ENTRY_KEYS = ("type", "id", "format", "index")  # what a details entry's tail, sent at the finish, keeps of it
_DETAIL_TYPES = list(DETAIL_TEXT_KEYS)  # an entry without an index: its channel by its type (-1, -2)


def _last_whitespace(text: str, before: int) -> int:
    return max(text.rfind(ch, 0, before) for ch in _WHITESPACE)


def _footer_after(text: str, header: int) -> bool:
    """A whole `-----END …-----` line follows the PEM header at `header`."""
    footer = text.find("-----END", header)
    return footer >= 0 and text.find("-----", footer + 8) >= 0


class StreamRedactor:
    """Redacts one stream channel; `feed` returns what may be shown now, `flush` the rest at the end."""

    def __init__(self, state: Redaction, on_withhold: Callable[[], None] | None = None) -> None:
        self.state = state
        self.on_withhold = on_withhold  # told once, when it withholds (the stream's guard: the answer is withheld)
        self.withheld = False  # the answer went over the scan limit: nothing more is released
        self.reason = ""  # which limit (the refusal's message), for the ledger
        self.count = True  # False while what it is fed repeats a text another channel counts (`reasoning`)
        self._pending = ""
        self._context = ""

    def feed(self, chunk: str) -> str:
        if self.withheld:
            return ""
        try:
            if self.state.budget is not None:
                self.state.budget.take_chars(len(chunk))
            buffer = self._pending + chunk
            cut = self._cut(buffer)
            return self._release(buffer, cut) if cut > 0 else self._hold(buffer)
        except ScanLimitExceeded as exc:
            return self._withhold(exc)

    def flush(self) -> str:
        if self.withheld or not self._pending:
            return ""
        try:
            return self._release(self._pending, len(self._pending))
        except ScanLimitExceeded as exc:
            return self._withhold(exc)

    def whole(self, text: str) -> str:
        """A whole text that repeats what a channel streamed (a thinking block's, at the block's end): redacted at
        once with the same placeholders, read on the same caps, its values not counted again."""
        if self.withheld:
            return WITHHELD
        try:
            if self.state.budget is not None:
                self.state.budget.take_chars(len(text))
            return redact(text, self.state, count=False)
        except ScanLimitExceeded as exc:
            return self._withhold(exc)

    def _withhold(self, exc: ScanLimitExceeded) -> str:
        self.withheld, self._pending, self.reason = True, "", exc.message
        if self.on_withhold is not None:
            self.on_withhold()
        return WITHHELD

    def _hold(self, buffer: str) -> str:
        self._pending = buffer
        return ""

    def _cut(self, buffer: str) -> int:
        """How much of `buffer` can be released: up to a whitespace `HOLD_CHARS` before its end, and never past
        an unterminated PEM header; everything but the hold once `MAX_PENDING_CHARS` is reached."""
        limit = len(buffer) - HOLD_CHARS
        if limit <= 0:
            return 0
        space = _last_whitespace(buffer, limit)
        cut = space + 1 if space >= 0 else 0
        header = buffer.rfind("-----BEGIN", 0, cut)
        if header >= 0 and not _footer_after(buffer, header):
            cut = header
        if cut == 0 and len(buffer) >= MAX_PENDING_CHARS:
            cut = limit
        return cut

    def _scan(self, scanned: str) -> list[Span]:
        """The spans in a window. Windows overlap (the context and the held tail are read again), so a window is
        scanned on a budget of its own (`ScanBudget.window`): what is left of the request's caps bounds the work
        of each scan (the context's values may be counted again), only what a window releases counts as the
        request's values (`_release`), and its phone checks are real work and count."""
        budget = self.state.budget
        if budget is None:
            return self.state.scanner.scan(scanned)
        window = budget.window(reread=CONTEXT_CHARS)
        try:
            return self.state.scanner.scan(scanned, window)
        finally:
            budget.settle(window)

    def _release(self, buffer: str, cut: int) -> str:
        """Scan context + buffer, redact the spans that end in the released part (a span crossing the cut moves
        the cut back to its start), keep the rest pending."""
        offset = len(self._context)
        scanned = self._context + buffer
        spans = self._scan(scanned)
        for span in spans:
            if offset <= span.start < offset + cut < span.end:
                cut = span.start - offset
        parts: list[str] = []
        pos = offset
        found = []
        for span in spans:
            if span.end <= offset or span.start >= offset + cut:
                continue
            found.append(span)
            parts.append(scanned[pos : max(pos, span.start)])
            parts.append(self.state.placeholder(span.entity, span.text))
            pos = span.end
        parts.append(scanned[pos : offset + cut])
        if self.state.budget is not None:
            self.state.budget.take_spans(len(found))
        if self.count:
            self.state.note(found)
        released = buffer[:cut]
        self._context = (self._context + released)[-CONTEXT_CHARS:]
        self._pending = buffer[cut:]
        return "".join(parts)


Transform = Callable[[str], str]


class _Channel:
    """One stream of text (a choice's content, or one tool call's arguments): restore, then redact."""

    def __init__(
        self, restore: Redaction | None, redact: Redaction | None, on_withhold: Callable[[], None] | None = None
    ) -> None:
        self.restorer = StreamRestorer(restore) if restore is not None else None
        self.redactor = StreamRedactor(redact, on_withhold) if redact is not None else None

    def feed(self, text: str) -> str:
        if self.restorer is not None:
            text = self.restorer.feed(text)
        return self.redactor.feed(text) if self.redactor is not None else text

    def flush(self) -> str:
        text = self.restorer.flush() if self.restorer is not None else ""
        if self.redactor is not None:
            text = (self.redactor.feed(text) if text else "") + self.redactor.flush()
        return text

    @property
    def withheld(self) -> bool:
        return self.redactor is not None and self.redactor.withheld


class StreamGuard:
    """Rewrites streamed chunk payloads in place: placeholders restored (`restore` state) and/or new PII
    redacted (`redact` state), per choice and per tool call, the held-back tails released with the choice's
    finishing chunk. Called with each chunk's payload; True when it changed."""

    def __init__(self, restore: Redaction | None = None, redact: Redaction | None = None) -> None:
        self._restore = restore
        self._redact = redact
        self._channels: dict[tuple[int, str, int], _Channel] = {}
        self._entries: dict[tuple[int, int], dict[str, Any]] = {}  # a details entry's type and index, for its tail
        self._withheld = False  # a channel withheld (told by its redactor): read per delta, so not a scan of them

    @property
    def withheld(self) -> bool:
        return self._withheld

    def _withholds(self) -> None:
        self._withheld = True

    def record(self) -> dict[str, Any]:
        """What the answer-side redaction found, for the ledger (counts by type, never values)."""
        if self._redact is None:
            return {}
        record: dict[str, Any] = {}
        if self._redact.counts():
            record.update(pii_output=self._redact.counts(), pii_output_action="redact")
        reasons = [c.redactor.reason for c in self._channels.values() if c.redactor is not None and c.withheld]
        if reasons:
            record.update(pii_output_action="redact", pii_output_scan_limit=reasons[0])
        return record

    def _channel(self, key: tuple[int, str, int], *, restores: bool = True) -> _Channel:
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = _Channel(self._restore if restores else None, self._redact, self._withholds)
        return channel

    def __call__(self, payload: dict[str, Any]) -> bool:
        changed = False
        for position, choice in enumerate(choices_of(payload)):
            if isinstance(choice, dict):
                index = choice.get("index")
                changed = self._choice(choice, index if isinstance(index, int) else position) or changed
        return changed

    def _choice(self, choice: dict[str, Any], index: int) -> bool:
        delta = choice.get("delta")
        holder, key = (delta, "content") if isinstance(delta, dict) else (choice, "text")
        changed = False
        if isinstance(holder.get(key), str):
            new = self._channel((index, key, 0)).feed(holder[key])
            changed, holder[key] = new != holder[key], new
        if isinstance(delta, dict) and (
            "reasoning_content" in delta or "reasoning" in delta or "thinking_blocks" in delta or DETAILS in delta
        ):
            changed = self._thinking(delta, index) or changed
        calls = holder.get("tool_calls") if isinstance(delta, dict) else None
        for position, call in enumerate(calls if isinstance(calls, list) else []):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                tool = call.get("index")
                channel = self._channel((index, "tool", tool if isinstance(tool, int) else position))
                new = channel.feed(function["arguments"])
                changed, function["arguments"] = changed or new != function["arguments"], new
        if isinstance(delta, dict) and DETAILS in delta and self._redact is not None and self.withheld:
            del delta[DETAILS]  # over a cap: the reasoning is withheld, its structured form (encrypted too) with it
            changed = True
        if choice.get("finish_reason"):
            changed = self._finish(holder, key, index) or changed
        return changed

    def _thinking(self, delta: dict[str, Any], index: int) -> bool:
        """A delta's reasoning (a channel of its own for each key that holds it, `reasoning_content` and
        `reasoning`: both reach a chat client where an upstream sends both) and the whole thinking blocks it ends
        with: their text redacted at once with the stream's placeholders (restored never: the client sends a
        block back as it got it), the signature kept."""
        changed = False
        entries = detail_texts(delta) if self._redact is not None and DETAILS in delta else []
        # whether the reasoning repeats the entries' pieces: read before the reasoning is rewritten
        repeated = bool(entries) and repeats_reasoning(delta, [entry[key] for entry, key in entries])
        for key in REASONING_KEYS:
            if isinstance(text := delta.get(key), str):
                new = self._channel((index, key, 0)).feed(text)
                changed, delta[key] = changed or new != text, new
        blocks = thinking_blocks(delta) if self._redact is not None else []
        if blocks and (redactor := self._channel((index, THINKING, 0)).redactor) is not None:
            for block in blocks:
                new = redactor.whole(block["thinking"])
                changed, block["thinking"] = changed or new != block["thinking"], new
        return self._details(entries, repeated, index) or changed

    def _details(self, entries: list[tuple[dict[str, Any], str]], repeated: bool, index: int) -> bool:
        """A delta's `reasoning_details` entries with a text (pieces of the entries, as a stream sends them): each
        entry index a channel of its own (an entry without one: one channel for its type, so that a later delta's
        pieces of it join its own, not another's), redacted (never restored: an entry may be signed) with the
        stream's placeholders, its held-back tail sent at the finish as an entry of the same type and index. Where
        the delta's reasoning repeats the pieces (OpenRouter sends both), their values are not counted again."""
        changed = False
        for entry, key in entries:
            number = entry.get("index")
            number = number if isinstance(number, int) and number >= 0 else -1 - _DETAIL_TYPES.index(entry["type"])
            channel = self._channel((index, DETAILS, number), restores=False)
            self._entries.setdefault((index, number), {k: entry[k] for k in _ENTRY_KEYS if k in entry})
            if channel.redactor is not None and entry[key]:  # an empty piece (a signature's) leaves it as it was
                channel.redactor.count = not repeated
            new = channel.feed(entry[key])
            changed, entry[key] = changed or new != entry[key], new
        return changed

    def _finish(self, holder: dict[str, Any], key: str, index: int) -> bool:
        changed = False
        for (choice, kind, tool), channel in sorted(self._channels.items()):
            if choice != index:
                continue
            rest = channel.flush()
            if not rest:
                continue
            changed = True
            if kind in REASONING_KEYS:
                holder[kind] = (holder.get(kind) or "") + rest
            elif kind == DETAILS:
                changed = self._detail_tail(holder, index, tool, rest) or changed
            elif kind != "tool":
                holder[key] = (holder.get(key) or "") + rest
            else:
                calls = holder.setdefault("tool_calls", [])
                calls.append({"index": tool, "function": {"arguments": rest}})
        return changed

    def _detail_tail(self, delta: dict[str, Any], index: int, number: int, rest: str) -> bool:
        """A details entry's held-back tail, as one more entry of its type and index (a withheld answer: none)."""
        if self.withheld:
            return False
        entry = self._entries[(index, number)]
        entries = delta.get(DETAILS)
        if type(entries) is not list:
            entries = delta[DETAILS] = []
        entries.append({**entry, DETAIL_TEXT_KEYS[entry["type"]]: rest})
        return True
