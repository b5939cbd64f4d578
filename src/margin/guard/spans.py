"""The span type every recognizer returns, the entity names, and overlap resolution."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

EMAIL = "EMAIL"
PHONE = "PHONE"
CREDIT_CARD = "CREDIT_CARD"
IBAN = "IBAN"
US_SSN = "US_SSN"
IP_ADDRESS = "IP_ADDRESS"
SECRET = "SECRET"
PERSON = "PERSON"
LOCATION = "LOCATION"

STRUCTURED_ENTITIES: tuple[str, ...] = (EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS, SECRET)
"""Entities found by patterns plus validation (checksums, number plans, entropy)."""

NER_ENTITIES: tuple[str, ...] = (PERSON, LOCATION)
"""Entities found only by the optional spaCy model."""

ALL_ENTITIES: tuple[str, ...] = STRUCTURED_ENTITIES + NER_ENTITIES


@dataclass(frozen=True, slots=True)
class Span:
    """One detected entity: `text[start:end] == self.text`. `score` is a fixed per-rule confidence in [0, 1]."""

    entity: str
    start: int
    end: int
    text: str
    score: float

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


def resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Keep a non-overlapping subset: highest score first, then the longer span, then the earlier one.

    Scores encode priority: a checksum-validated IBAN (0.95) beats a phone reading of the same digits (0.7),
    a vendor-prefixed key (0.99) beats everything. Result is sorted by start offset.

    O(n log n): the kept spans never overlap, so sorted by start they are sorted by end too, and a candidate
    only has to be compared with its two neighbours in that order (found by bisection).
    """
    ranked = sorted(spans, key=lambda s: (-s.score, s.start - s.end, s.start))
    starts: list[int] = []
    kept: list[Span] = []
    for span in ranked:
        if span.end <= span.start:
            continue
        at = bisect_left(starts, span.start)
        if at < len(kept) and kept[at].start < span.end:
            continue  # the next kept span starts inside this one
        if at > 0 and kept[at - 1].end > span.start:
            continue  # the previous kept span reaches into this one
        starts.insert(at, span.start)
        kept.insert(at, span)
    return kept


def count_entities(spans: Iterable[Span]) -> dict[str, int]:
    """Counts per entity type, for logs and the ledger: never the raw values."""
    return dict(sorted(Counter(s.entity for s in spans).items()))
