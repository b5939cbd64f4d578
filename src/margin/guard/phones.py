"""PHONE recognizer: a loose candidate regex, then `phonenumbers` number-plan validation.

International numbers (`+44 …`, `0044 …`) are validated on their own country code. National numbers
(`(415) 555-2671`, `020 7946 0958`) are tried against a list of regions and kept on the first valid reading.
Bare digit runs with no separators (`4155552671`) are too often order or account numbers: they count only
when a phone word ("call", "tel", "mobile", …) precedes them. Any number right after an id word
("order", "invoice", "tracking", …) is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import phonenumbers

from margin.guard.recognizers import ID_CONTEXT_RE, context_before
from margin.guard.spans import PHONE, Span

DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "NL", "ES", "IT")
"""Regions whose national formats are recognized; international formats work for every country."""

_PHONE_RE = re.compile(
    r"(?<![\w+.,/-])\+?(?:\(\+?\d{1,4}\)|\d)(?:[ .\-/]{0,2}(?:\(\d{1,5}\)|\d)){6,16}(?![\w-]|[.,/]\d)"
)
_PHONE_CONTEXT_RE = re.compile(
    r"(?i)\b(?:phone|tel|telephone|call|calls|mobile|mob|cell|fax|ring|text|sms|whatsapp|signal|contact|reach|"
    r"dial|hotline|landline|number|nummer|numéro|portable|telefon|bel)\b"
)
_DATE_RE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
_DOTTED_QUAD_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


def _is_valid(candidate: str, regions: tuple[str, ...]) -> bool:
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    tries: tuple[str | None, ...] = (None,) if candidate.startswith("+") else regions
    for region in tries:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def find_phones(text: str, regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS) -> Iterator[Span]:
    for m in _PHONE_RE.finditer(text):
        raw = m.group()
        digits = sum(ch.isdigit() for ch in raw)
        if not 7 <= digits <= 15 or _DATE_RE.match(raw) or _DOTTED_QUAD_RE.match(raw):
            continue
        if ID_CONTEXT_RE.search(context_before(text, m.start(), 24)):
            continue
        if raw.isdigit() and not raw.startswith("00") and not _PHONE_CONTEXT_RE.search(context_before(text, m.start(), 30)):
            continue
        if _is_valid(raw, regions):
            yield Span(PHONE, m.start(), m.end(), raw, 0.7)
