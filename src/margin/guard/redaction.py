"""Reversible redaction: typed placeholders per request, restored in responses (also when streamed).

One `Redaction` lives for one request. Each distinct value gets one placeholder (`<EMAIL_1>`, `<EMAIL_2>`, …)
used in every message of that request, so the model can still tell "the same address" from "another one".
Values are compared after light normalization (case for e-mail, separators for numbers), so
`Jane@x.org` and `jane@x.org`, or `4111 1111 1111 1111` and `4111-1111-1111-1111`, share a placeholder;
`restore` writes back the first spelling seen.
"""

from __future__ import annotations

import re
from collections import Counter

from margin.guard.limits import ScanBudget
from margin.guard.pii import PiiScanner
from margin.guard.spans import CREDIT_CARD, EMAIL, IBAN, PHONE, US_SSN, Span

PLACEHOLDER_RE = re.compile(r"<([A-Z][A-Z_]*)_(\d{1,6})>")
_PARTIAL_RE = re.compile(r"<[A-Z_]*\d{0,6}$")
_DIGIT_ENTITIES = frozenset({CREDIT_CARD, PHONE, US_SSN})


def _normalize(entity: str, value: str) -> str:
    if entity == EMAIL:
        return value.casefold()
    if entity in _DIGIT_ENTITIES:
        return "".join(ch for ch in value if ch.isdigit() or ch == "+")
    if entity == IBAN:
        return value.replace(" ", "").upper()
    return value


class Redaction:
    """The placeholder map of one request. Not thread-safe; one per request."""

    def __init__(self, scanner: PiiScanner, budget: ScanBudget | None = None) -> None:
        self.scanner = scanner
        self.budget = budget  # the request's caps on entities and phone checks (None: uncapped)
        self._by_value: dict[tuple[str, str], str] = {}
        self._originals: dict[str, str] = {}
        self._next: Counter[str] = Counter()
        self._found: Counter[str] = Counter()

    def placeholder(self, entity: str, value: str) -> str:
        """The placeholder for this value, allocating the next number for its entity on first sight."""
        key = (entity, _normalize(entity, value))
        existing = self._by_value.get(key)
        if existing is not None:
            return existing
        self._next[entity] += 1
        token = f"<{entity}_{self._next[entity]}>"
        self._by_value[key] = token
        self._originals[token] = value
        return token

    def original(self, placeholder: str) -> str | None:
        return self._originals.get(placeholder)

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(self._originals)

    def may_begin(self, tail: str) -> bool:
        """Whether `tail` (`<`, capitals and underscores, then up to 6 digits: `_PARTIAL_RE`) is the start of one
        of this request's placeholders, in time of the entity types, not of the placeholders (a request may hold
        10,000 of them, and a stream's every chunk may end in `<`). Placeholder numbers run 1..n per entity with
        no leading zero, so digits d start one exactly when 1 ≤ d ≤ n."""
        split = len(tail.rstrip("0123456789"))
        letters, digits = tail[1:split], tail[split:]
        if not digits:
            return any(f"{entity}_".startswith(letters) for entity in self._next)
        allocated = self._next.get(letters[:-1], 0) if letters.endswith("_") else 0
        return not digits.startswith("0") and int(digits) <= allocated

    def note(self, spans: list[Span]) -> None:
        self._found.update(s.entity for s in spans)

    def counts(self) -> dict[str, int]:
        """Detections per entity type over the whole request: safe to log (no values)."""
        return dict(sorted(self._found.items()))

    def distinct_counts(self) -> dict[str, int]:
        """Distinct values per entity type (placeholders allocated)."""
        return dict(sorted(self._next.items()))


def redact(text: str, state: Redaction, *, count: bool = True) -> str:
    """Replace every detected entity in `text` by its placeholder in `state`; `text` itself when none. `count`:
    False for a text that repeats one already redacted (a thinking block's), whose values are not counted again."""
    spans = state.scanner.scan(text, state.budget)
    if not spans:
        return text
    if count:
        state.note(spans)
    parts: list[str] = []
    pos = 0
    for span in spans:
        parts.append(text[pos : span.start])
        parts.append(state.placeholder(span.entity, span.text))
        pos = span.end
    parts.append(text[pos:])
    return "".join(parts)


def restore(text: str, state: Redaction) -> str:
    """Put the original values back for every placeholder of `state`; unknown `<…_n>` are left alone."""
    if "<" not in text:
        return text

    def back(m: re.Match[str]) -> str:
        original = state.original(m.group())
        return m.group() if original is None else original

    return PLACEHOLDER_RE.sub(back, text)


class StreamRestorer:
    """Restores placeholders in a streamed response whose chunks may split a placeholder anywhere.

    `feed` returns what can be shown now and holds back only a trailing `<…` that is still a prefix of one of
    the request's placeholders; `flush` returns whatever is left at the end of the stream.
    """

    def __init__(self, state: Redaction) -> None:
        self.state = state
        self._pending = ""

    def feed(self, chunk: str) -> str:
        buffer = self._pending + chunk
        cut = self._hold_from(buffer)
        self._pending = buffer[cut:]
        return restore(buffer[:cut], self.state)

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return restore(rest, self.state)

    def _hold_from(self, buffer: str) -> int:
        lt = buffer.rfind("<")
        if lt < 0 or not _PARTIAL_RE.match(buffer, lt):
            return len(buffer)
        return lt if self.state.may_begin(buffer[lt:]) else len(buffer)
