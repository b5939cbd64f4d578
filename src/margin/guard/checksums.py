"""Validators that turn a pattern match into a confident detection: Luhn, IBAN mod-97, SSN rules, entropy."""

from __future__ import annotations

import math
import re
from collections import Counter
from types import MappingProxyType

IBAN_LENGTHS: MappingProxyType[str, int] = MappingProxyType(
    {
        "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
        "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
        "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
        "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
        "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
        "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
        "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
        "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
        "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    }
)  # fmt: skip
"""IBAN length per country (SWIFT IBAN registry). A country not listed is not an IBAN country."""

# Issuer prefixes of the major card networks (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro).
# JCB is matched on its whole 35 block (generators and test decks use 3500-3527 too).
# A Luhn-valid digit run that starts elsewhere (ISBN 978…, epoch milliseconds 17…) is not reported as a card.
_CARD_PREFIX_RANGES: tuple[tuple[int, int, int], ...] = (
    (1, 4, 4),
    (2, 51, 55),
    (4, 2221, 2720),
    (2, 34, 34),
    (2, 37, 37),
    (4, 6011, 6011),
    (3, 644, 649),
    (2, 65, 65),
    (2, 35, 35),
    (3, 300, 305),
    (2, 36, 36),
    (2, 38, 39),
    (2, 62, 62),
    (2, 50, 50),
    (2, 56, 58),
    (2, 63, 63),
    (2, 67, 67),
)


def luhn_valid(digits: str) -> bool:
    """The Luhn mod-10 check used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_prefix_known(digits: str) -> bool:
    """True when the number starts with an issuer prefix of a major card network."""
    return any(lo <= int(digits[:width]) <= hi for width, lo, hi in _CARD_PREFIX_RANGES)


def iban_valid(compact: str) -> bool:
    """ISO 13616: known country, that country's length, alphanumeric BBAN, and mod-97 == 1."""
    if len(compact) < 15 or IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    if not (compact[2:4].isdigit() and compact.isalnum() and compact.isascii()):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """US SSN rules: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    return area not in {"000", "666"} and not area.startswith("9") and group != "00" and serial != "0000"


def shannon_entropy(text: str) -> float:
    """Bits per character of the string's own character distribution."""
    n = len(text)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


_SEGMENT_RE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def mean_segment_length(text: str) -> float:
    """Average length of the word-like pieces of `text` (`Capitalized`, `lower`, `UPPER`, digit runs).

    Identifiers are built from words (`AbstractProxyFactoryBean2` → 5.7), random base62 tokens break into
    one- or two-character pieces (median 1.85; 99th percentile under 3 for 24+ characters).
    """
    segments = _SEGMENT_RE.findall(text)
    return sum(map(len, segments)) / len(segments) if segments else 0.0
