"""Text normalization for the injection rules, keeping a map back to the original offsets.

Obfuscation that a model reads straight through but a regex does not: zero-width and bidi control
characters, soft hyphens, full-width and other compatibility forms (NFKC), and Cyrillic/Greek letters that
look like Latin ones. Normalizing one character at a time keeps `offsets[i]`, the original index of
normalized character `i`, so findings point at the user's real text.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from types import MappingProxyType

_INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d"
    "\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\u3164\ufeff\uffa0"
)
_HOMOGLYPHS: MappingProxyType[int, int] = MappingProxyType(
    str.maketrans(
        "аеорсухіјѕԁһԛԝАВЕКМНОРСТХІЈЅοαερτυνκιΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",
        "aeopcyxijsdhqwABEKMHOPCTXIJSoaeptuvkiABEHIKMNOPTYXZ",
    )
)


@dataclass(frozen=True, slots=True)
class Normalized:
    """Lowercased, de-obfuscated text and, for each of its characters, the index in the original."""

    text: str
    offsets: tuple[int, ...]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Map a [start, end) range of the normalized text back onto the original text."""
        if not self.offsets:
            return 0, 0
        return self.offsets[start], self.offsets[max(start, end - 1)] + 1


def normalize(text: str) -> Normalized:
    """NFKC per character, invisible characters dropped, homoglyphs folded to Latin, lowercased."""
    if text.isascii():
        return Normalized(text.lower(), tuple(range(len(text))))
    chars: list[str] = []
    offsets: list[int] = []
    for i, ch in enumerate(text):
        if ch in _INVISIBLE or unicodedata.category(ch) == "Cf":
            continue
        folded = unicodedata.normalize("NFKC", ch).translate(_HOMOGLYPHS).lower()
        for out in folded:
            chars.append(out)
            offsets.append(i)
    return Normalized("".join(chars), tuple(offsets))
