"""The span type every recognizer returns, the entity names, and overlap resolution."""

from __future__ import annotations

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

    One sort, then one sweep over the ranked spans against a byte map of the characters already taken: a
    candidate is checked (`bytearray.find`, C speed) and marked over its own length only, so the work is
    O(n log n + total span length), never a comparison of every pair.
    """
    ranked = sorted(spans, key=lambda s: (-s.score, s.start - s.end, s.start))
    if not ranked:
        return []
    taken = bytearray(max(span.end for span in ranked))
    kept: list[Span] = []
    for span in ranked:
        if span.end <= span.start or taken.find(1, span.start, span.end) >= 0:
            continue
        taken[span.start : span.end] = b"\x01" * (span.end - span.start)
        kept.append(span)
    kept.sort(key=lambda s: s.start)
    return kept


def count_entities(spans: Iterable[Span]) -> dict[str, int]:
    """Counts per entity type, for logs and the ledger: never the raw values."""
    return dict(sorted(Counter(s.entity for s in spans).items()))
