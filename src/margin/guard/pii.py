"""`PiiScanner`: runs the recognizers a caller asked for and returns non-overlapping spans.

Cheap signals are computed first (`_Signals`): a text with no '@', no run of 7+ digit-ish characters, no
'::', no 20+ character chunk and no credential word cannot contain any structured entity and returns at
once; otherwise only the finders whose signal fired run. Measured with `margin eval guard`.

With a budget, the finders' spans are counted as they are reported (`_Tally`), so the scan of a text dense with
values stops shortly after `max_spans` instead of after every finder read the whole text. Two counts, each refused
with `ScanLimitExceeded` (413 `guard_scan_limit`):

- values: a reported span that overlaps no span counted before it in this text is a value, and the request's values
  plus this text's may not pass `max_spans`. The readings of one value overlap one another (`api_key=sk-…` is a
  credential value, a vendor key and a random token), so ordinary text is refused exactly when its resolved spans
  would pass the cap, as before; only a later, longer, higher-scored span that swallows several counted ones
  (numbers written inside a PEM block's body) makes this count higher than the resolved one.
- readings: every reported span counts, overlapping or not; past `CANDIDATES_PER_SPAN` × `max_spans` per request
  the scan stops, so spans nested in one long value (IP addresses inside one long e-mail domain) cannot make it
  read on either.

The resolved spans are then taken from the budget as before (`take_spans`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from margin.errors import ConfigError
from margin.guard.limits import ScanBudget
from margin.guard.ner import NerFinder, load_ner
from margin.guard.phones import DEFAULT_PHONE_REGIONS, find_phones
from margin.guard.recognizers import find_cards, find_emails, find_ibans, find_ips, find_ssns
from margin.guard.secrets import find_secrets
from margin.guard.spans import (
    ALL_ENTITIES,
    CREDIT_CARD,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    NER_ENTITIES,
    PHONE,
    SECRET,
    STRUCTURED_ENTITIES,
    US_SSN,
    Span,
    resolve_overlaps,
)

DIGIT_RUN_RE = re.compile(r"\d[\d .()/-]{5,}\d")
"""A run that could be a phone, card, IBAN tail or SSN: the cheap signal for the dear number checks."""
_CREDENTIAL_WORDS: tuple[str, ...] = ("pass", "pwd", "secret", "token", "key", "bearer", "-----begin", "://")


@dataclass(frozen=True, slots=True)
class _Signals:
    """Cheap facts about a text (C-speed `in`, `split`, one short regex) that decide which finders can match."""

    at: bool
    digits: bool
    colons: bool
    long_token: bool
    credential_word: bool

    @classmethod
    def of(cls, text: str) -> _Signals:
        lowered = text.lower()
        return cls(
            at="@" in text,
            digits=DIGIT_RUN_RE.search(text) is not None,
            colons="::" in text or text.count(":") >= 7,
            long_token=max(map(len, text.split()), default=0) >= 20,
            credential_word=any(word in lowered for word in _CREDENTIAL_WORDS),
        )

    def any(self) -> bool:
        return self.at or self.digits or self.colons or self.long_token or self.credential_word

    def allows(self, entity: str) -> bool:
        if entity == EMAIL:
            return self.at
        if entity == IP_ADDRESS:
            return self.digits or self.colons or self.long_token
        if entity == SECRET:
            return self.long_token or self.credential_word
        return self.digits


@dataclass(slots=True)
class _Tally:
    """One scan's count of the spans its finders report, charged to the request's budget as they are reported."""

    budget: ScanBudget
    size: int
    values: int = 0
    _counted: bytearray | None = field(default=None, repr=False)

    def count(self, spans: Iterable[Span]) -> Iterator[Span]:
        """`spans` as they come, each one charged first: `ScanLimitExceeded` stops the finder behind them."""
        for span in spans:
            self.budget.take_candidate()
            if self._counted is None:
                self._counted = bytearray(self.size)
            if span.end > span.start and self._counted.find(1, span.start, span.end) < 0:
                self._counted[span.start : span.end] = b"\x01" * (span.end - span.start)
                self.values += 1
                self.budget.check_spans(self.values)
            yield span


_Finder = Callable[[str], Iterator[Span]]
_STRUCTURED_FINDERS: tuple[tuple[str, _Finder], ...] = (
    (EMAIL, find_emails),
    (CREDIT_CARD, find_cards),
    (IBAN, find_ibans),
    (US_SSN, find_ssns),
    (IP_ADDRESS, find_ips),
    (SECRET, find_secrets),
)


class PiiScanner:
    """Detects PII and secrets in text. Build one per process and share it: `scan` keeps no state.

    `entities`: names from `ALL_ENTITIES` (default: all structured ones, plus PERSON/LOCATION when NER is on).
    `ner`: True to load the spaCy model, False never, None to use it when installed. When it is wanted but
    not installed, `ner_status` says so and only structured entities are found.
    """

    def __init__(
        self,
        entities: Iterable[str] | None = None,
        ner: bool | None = None,
        *,
        phone_regions: Iterable[str] = DEFAULT_PHONE_REGIONS,
        ner_model: str | None = None,
    ) -> None:
        chosen = tuple(entities) if entities is not None else ALL_ENTITIES
        unknown = sorted(set(chosen) - set(ALL_ENTITIES))
        if unknown:
            raise ConfigError(f"unknown PII entities {unknown}; known: {list(ALL_ENTITIES)}")
        self.entities: frozenset[str] = frozenset(chosen)
        self.phone_regions: tuple[str, ...] = tuple(phone_regions)
        self._ner: NerFinder | None = None
        self.ner_status = "NER off"
        if ner is not False and self.entities & set(NER_ENTITIES):
            self._ner, self.ner_status = load_ner(ner_model)
        if self._ner is None:
            self.entities -= set(NER_ENTITIES)

    @property
    def ner_enabled(self) -> bool:
        return self._ner is not None

    def scan(self, text: str, budget: ScanBudget | None = None) -> list[Span]:
        """All detected entities in `text`, non-overlapping, sorted by offset. With a `budget`, the phone
        checks, the spans reported and the entities kept count against the request's caps as they are found
        (`ScanLimitExceeded` past them, see the module's doc)."""
        signals = _Signals.of(text)
        tally = _Tally(budget, len(text)) if budget is not None else None
        spans = self._structured(text, signals, budget, tally) if signals.any() else []
        if self._ner is not None and text.strip():
            named = (s for s in self._ner(text) if s.entity in self.entities)
            spans.extend(tally.count(named) if tally is not None else named)
        resolved = resolve_overlaps(spans)
        if budget is not None and resolved:
            budget.take_spans(len(resolved))
        return resolved

    def _structured(self, text: str, signals: _Signals, budget: ScanBudget | None, tally: _Tally | None) -> list[Span]:
        """Each finder's spans, counted as they are found when there is a budget (so a finder stops early)."""
        found: list[Iterator[Span]] = [
            finder(text) for entity, finder in _STRUCTURED_FINDERS if entity in self.entities and signals.allows(entity)
        ]
        if PHONE in self.entities and signals.digits:
            found.append(find_phones(text, self.phone_regions, budget))
        spans: list[Span] = []
        for spans_of_one in found:
            spans.extend(tally.count(spans_of_one) if tally is not None else spans_of_one)
        return spans


__all__ = ["STRUCTURED_ENTITIES", "PiiScanner"]
