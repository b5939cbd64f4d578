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

from margin.guard.limits import ScanBudget
from margin.guard.recognizers import ID_CONTEXT_RE, continues_iban_like
from margin.guard.spans import PHONE, Span
from margin.guard.text import context_before

DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "NL", "ES", "IT")
"""Regions whose national formats are recognized; international formats work for every country."""

_PHONE_RE = re.compile(
    r"(?=[\d+(])(?<![\w+.,/-])(?<!\d[ ])"  # starts a number, not glued to a word or to an earlier number
    r"\+?(?:\(\+?\d{1,5}\)|\d)(?:[ .\-/]{0,2}(?:\(\d{1,5}\)|\d)){4,16}(?![\w-]|[ .,/]\d)"
)
_PHONE_CONTEXT_RE = re.compile(
    r"(?i)\b(?:phone|tel|telephone|call|calls|mobile|mob|cell|fax|ring|text|sms|whatsapp|signal|contact|reach|"
    r"dial|hotline|landline|number|nummer|numéro|portable|telefon|bel)\b"
)
# Shapes that are never phone numbers even when some region's plan accepts the digits: dates and
# date-times, year/sequence ids, SSN-shaped AAA-GG-SSSS, decimals, and dotted groups that are not a
# dotted phone style (3+ dots, or 2 dots ending in a 4-digit group like 206.269.0743).
_NOT_PHONE_RE = re.compile(
    r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$|^(?:19|20)\d\d[/-]\d+$"
    r"|^\d{3}-\d{2}-\d{4}$|^\+?\d+[.,]\d+$|^\+?\d+\.\d+\.\d{1,3}$"
)
_GROUP_SPLIT_RE = re.compile(r"[ .\-/()]+")


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


def _implausible_grouping(raw: str) -> bool:
    """Groupings that belong to other numbers: IBAN/card/tracking blocks of four, card 4-6-5, dotted
    IP/OID/version shapes, a decimal point after a space-grouped amount, or too many digits for a
    national number (12 at most without a country code)."""
    body = raw.lstrip("+")
    groups = [g for g in _GROUP_SPLIT_RE.split(body) if g]
    sizes = [len(g) for g in groups]
    national = not raw.startswith(("+", "00"))
    if national and sizes.count(1) >= 2:  # "4 8 15 16 23 42"
        return True
    if national and len(sizes) >= 3 and all(size == 4 for size in sizes[:-1]) and sizes[-1] <= 4:
        return True
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    if "." in raw and (" " in raw or any(size == 1 for size in sizes) or (len(sizes) == 4 and max(sizes) <= 3)):
        return True
    return national and sum(sizes) > 12


def find_phones(
    text: str, regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS, budget: ScanBudget | None = None
) -> Iterator[Span]:
    """Validated phone numbers. Each distinct candidate is validated once per call (the dear part, counted
    against `budget`); repeats reuse the answer."""
    checked: dict[str, bool] = {}
    for m in _PHONE_RE.finditer(text):
        raw = m.group()
        digits = sum(ch.isdigit() for ch in raw)
        if not 7 <= digits <= 15 or _NOT_PHONE_RE.match(raw) or _implausible_grouping(raw):
            continue
        if ID_CONTEXT_RE.search(context_before(text, m.start(), 24)) or continues_iban_like(text, m.start()):
            continue
        if (
            raw.isdigit()
            and not raw.startswith("00")
            and not _PHONE_CONTEXT_RE.search(context_before(text, m.start(), 60))
        ):
            continue
        valid = checked.get(raw)
        if valid is None:
            if budget is not None:
                budget.take_phone_check()
            valid = checked[raw] = _is_valid(raw, regions)
        if valid:
            yield Span(PHONE, m.start(), m.end(), raw, 0.7)
