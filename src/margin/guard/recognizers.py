"""Pattern recognizers for EMAIL, CREDIT_CARD, IBAN, US_SSN and IP_ADDRESS.

Each recognizer is a candidate regex plus a validator: the regex is deliberately loose about separators,
and the validator (Luhn, mod-97, SSN area rules, `ipaddress`) decides. Context words are used only to
veto (an "order"/"invoice" number) or to admit ambiguous bare digit runs (a 9-digit SSN).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from margin.guard.checksums import IBAN_LENGTHS, card_prefix_known, iban_valid, luhn_valid, ssn_valid
from margin.guard.spans import CREDIT_CARD, EMAIL, IBAN, IP_ADDRESS, US_SSN, Span
from margin.guard.text import context_before

_EMAIL_LOCAL_RE = re.compile(r"[^\W_](?:[\w.%+-]{0,62}[\w%+-])?")
_EMAIL_DOMAIN_RE = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")
_EMAIL_LOCAL_EXTRA = frozenset("._%+-_")
# Patterns start with a plain `\d` and check the character before it afterwards: a leading lookbehind
# would stop the regex engine from skipping quickly to the next digit (3-4x slower on prose).
_CARD_RE = re.compile(r"\d(?<![\w.,+-]\d)(?<!\d[ ]\d)(?:[ -]?\d){12,18}(?![\w-]|[ .,]\d)")
_IBAN_LIKE_BEFORE_RE = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4})+ ?$")
_CARD_GROUPINGS: tuple[tuple[int, ...], ...] = (
    (4, 4, 4, 4),
    (4, 6, 5),
    (4, 6, 4),
    (4, 4, 4, 4, 3),
    (4, 4, 4, 1),
    (4, 4, 5),
)
_IBAN_START_RE = re.compile(r"([A-Za-z](?<![A-Za-z0-9].)[A-Za-z])(\d{2})(?=[ ]?[A-Za-z0-9])")
_SSN_RE = re.compile(r"(\d(?<![\w.-]\d)\d\d)([- ]?)(\d{2})\2(\d{4})(?![\w-]|[.,]\d)")
_SSN_CONTEXT_RE = re.compile(r"(?i)\b(?:ssn|social security|soc\.? sec|taxpayer id|tin)\b")
_IPV4_RE = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w]|\.\d)")
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)"
)
_VERSION_CONTEXT_RE = re.compile(r"(?i)(?:\bv|\bversion|\bver\.?|\bbuild|\brelease|\bfirmware|\bsection|§)\s*$")
ID_CONTEXT_RE = re.compile(
    r"(?i)(?:\border|\bpo|\binvoice|\bref(?:erence)?|\btracking|\bticket|\bsku|\bisbn|\bpart|\bserial|\bcase|#)"
    r"(?:\s*(?:number|num|no|nr|id)\b)?[\s:#.-]*$"
)


def continues_iban_like(text: str, start: int) -> bool:
    """True when digits at `start` continue an IBAN-shaped string (e.g. the tail of a mistyped IBAN)."""
    return _IBAN_LIKE_BEFORE_RE.search(context_before(text, start, 40)) is not None


def _local_part_start(text: str, at: int) -> int | None:
    """Walk back from '@' over local-part characters (at most 64); None when the run is longer."""
    start = at
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in _EMAIL_LOCAL_EXTRA):
        start -= 1
        if at - start > 64:
            return None
    return start


def find_emails(text: str) -> Iterator[Span]:
    """Anchor on each '@': walk back over the local part, match the domain forward (linear in the text)."""
    at = text.find("@")
    while at >= 0:
        start = _local_part_start(text, at)
        domain = _EMAIL_DOMAIN_RE.match(text, at + 1)
        if start is not None and domain is not None and _EMAIL_LOCAL_RE.fullmatch(text, start, at):
            local = text[start:at]
            if ".." not in local and ".." not in domain.group():
                yield Span(EMAIL, start, domain.end(), text[start : domain.end()], 0.95)
        at = text.find("@", at + 1)


def _grouping_plausible(raw: str) -> bool:
    """Cards are written compact or in the issuer's groups with one kind of separator."""
    separators = {ch for ch in raw if not ch.isdigit()}
    if not separators:
        return True
    if len(separators) > 1:
        return False
    groups = tuple(len(g) for g in raw.split(separators.pop()))
    return groups in _CARD_GROUPINGS


def find_cards(text: str) -> Iterator[Span]:
    for m in _CARD_RE.finditer(text):
        raw = m.group()
        digits = raw.replace(" ", "").replace("-", "")
        if not 13 <= len(digits) <= 19 or not _grouping_plausible(raw):
            continue
        if not (luhn_valid(digits) and card_prefix_known(digits)):
            continue
        if ID_CONTEXT_RE.search(context_before(text, m.start(), 16)) or continues_iban_like(text, m.start()):
            continue
        yield Span(CREDIT_CARD, m.start(), m.end(), raw, 0.9)


def _iban_end(text: str, pos: int, length: int) -> int | None:
    """Walk `length` alphanumerics from `pos`, allowing single spaces only between groups of four."""
    taken = 0
    i = pos
    while taken < length and i < len(text):
        ch = text[i]
        if ch == " " and taken % 4 == 0 and taken and i + 1 < len(text) and text[i + 1] != " ":
            i += 1
            continue
        if not (ch.isascii() and ch.isalnum()):
            return None
        taken += 1
        i += 1
    if taken < length or (i < len(text) and text[i].isalnum()):
        return None
    return i


def find_ibans(text: str) -> Iterator[Span]:
    for m in _IBAN_START_RE.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1).upper())
        if length is None:
            continue
        end = _iban_end(text, m.start(), length)
        if end is None:
            continue
        raw = text[m.start() : end]
        if iban_valid(raw.replace(" ", "").upper()):
            yield Span(IBAN, m.start(), end, raw, 0.95)


def _ssn_context(before: str) -> bool:
    """An SSN word precedes, with no other number between it and the candidate."""
    ends = [m.end() for m in _SSN_CONTEXT_RE.finditer(before)]
    return bool(ends) and not any(ch.isdigit() for ch in before[ends[-1] :])


def find_ssns(text: str) -> Iterator[Span]:
    """AAA-GG-SSSS or AAA GG SSSS anywhere; a bare 9-digit run only after an SSN context word."""
    for m in _SSN_RE.finditer(text):
        if not ssn_valid(m.group(1), m.group(3), m.group(4)):
            continue
        if not m.group(2) and not _ssn_context(context_before(text, m.start(), 40)):
            continue
        if ID_CONTEXT_RE.search(context_before(text, m.start(), 16)):
            continue
        yield Span(US_SSN, m.start(), m.end(), m.group(), 0.85)


def find_ips(text: str) -> Iterator[Span]:
    """IPv4 dotted quads and IPv6 forms that `ipaddress` accepts; dotted quads after 'version'/'v' are skipped."""
    if "." in text:
        for m in _IPV4_RE.finditer(text):
            if _VERSION_CONTEXT_RE.search(context_before(text, m.start(), 12)):
                continue
            try:
                ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            yield Span(IP_ADDRESS, m.start(), m.end(), m.group(), 0.85)
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6_RE.finditer(text):
            raw = m.group()
            if sum(ch.isalnum() for ch in raw) < 2:
                continue
            try:
                ipaddress.IPv6Address(raw)
            except ValueError:
                continue
            yield Span(IP_ADDRESS, m.start(), m.end(), raw, 0.85)
