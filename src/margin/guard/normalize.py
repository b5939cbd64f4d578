"""Text normalization for the injection rules, keeping a map back to the original offsets.

Obfuscation that a model reads straight through but a regex does not: invisible characters (Unicode's
Default_Ignorable_Code_Point: zero-width and bidi controls, soft hyphens, variation selectors, tag characters,
Hangul fillers; and every other format character), full-width and other compatibility forms (NFKC), and
letters of any script that look like a Latin letter or a digit (Unicode TR39's confusables: `homoglyphs`). Each
character is normalized on its own (`_fold`), so the
normalized text is the concatenation of its characters' folds and `offsets[i]`, the original index of normalized
character `i`, points findings at the user's real text.

NFKC can multiply text (U+FDFA alone becomes 18 characters), so what the text grows by is charged to the
request's `ScanBudget` (`guard.max_scan_chars`) before the normalized text is built: past it, the budget raises
`ScanLimitExceeded` as it does for any text over the cap. The work is done once per distinct character and the
rest at C speed (`str.translate`, iterators), with offsets kept as an array of ints, and only when some
character changes length (otherwise they are the identity).
"""

from __future__ import annotations

import functools
import unicodedata
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain, repeat
from types import MappingProxyType

import regex

from margin.guard.limits import ScanBudget

# drawn as nothing: a variation selector (U+FE00-FE0F, U+E0100-E01EF, Mongolian U+180B-180F) is a nonspacing mark,
# not a format character, so `ignore` with one after each letter passed the rules (before, a hand-kept list)
_INVISIBLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DIRECTION_MARKS = "\u200e\u200f"  # the package writes a right-to-left character between LRMs
# folded before TR39 was: Greek letters whose TR39 prototype is not ASCII (ε → ꞓ, τ → ᴛ, κ → ĸ)
_BEYOND_TR39 = {ord("ε"): "e", ord("τ"): "t", ord("κ"): "k"}
# combining diacritical marks (the blocks U+0300-036F, 1AB0-1AFF, 1DC0-1DFF, 20D0-20FF, FE20-FE2F), dropped after
# NFKD: an accent or a dot above a letter hides it from the rules (`ignöre`, `i` + U+0307, stacked "zalgo" marks),
# and a lone one is drawn on the letter before it. The marks of other scripts (Indic and Arabic vowel signs, kana
# voicing marks) are their letters' own and are kept, so their text keeps its length
_DIACRITICS = regex.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")


@functools.cache
def homoglyphs() -> Mapping[int, str]:
    """Unicode TR39's confusables (the skeleton's source → prototype, from `confusable-homoglyphs`' copy of
    confusables.txt), kept where a non-ASCII character's prototype is one ASCII letter or digit: what the rules
    match. Built once, on first use (`InjectionDetector()` builds it, at startup). TR39 does not tell `I` from `l`
    (its prototype for both is `l`): a capital whose prototype is `l` (Greek `Ι`, Cyrillic `І`, `Ӏ`) folds to `I`,
    as it reads in an upper-case word. Three Greek letters the hand-kept table folded before keep their fold
    (`_BEYOND_TR39`)."""
    from confusable_homoglyphs.confusables import confusables_data  # 0.9 MB of JSON: loaded on first use only

    table = dict(_BEYOND_TR39)
    for source, entries in confusables_data.items():
        char = source.strip(_DIRECTION_MARKS)
        if len(char) != 1 or char.isascii():
            continue
        targets = [entry["c"] for entry in entries if entry["c"] in _ASCII_ALNUM]
        if targets:
            table[ord(char)] = "I" if targets[0] == "l" and char.isupper() else targets[0]
    return MappingProxyType(table)


@dataclass(frozen=True, slots=True)
class Normalized:
    """Lowercased, de-obfuscated text and, for each of its characters, the index in the original (None: the
    identity, no character changed length)."""

    text: str
    offsets: array[int] | None = None

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Map a [start, end) range of the normalized text back onto the original text."""
        if not self.text:
            return 0, 0
        last = max(start, end - 1)
        if self.offsets is None:
            return start, last + 1
        return self.offsets[start], self.offsets[last] + 1


def _strip_marks(text: str) -> str:
    """NFKD, combining diacritical marks dropped (`_DIACRITICS`), NFC: `ö`, `í`, `i` + U+0307 read as `o`, `i`, `i`;
    what NFKD splits otherwise (Hangul syllables, kana with a voicing mark) is put back together."""
    return unicodedata.normalize("NFC", _DIACRITICS.sub("", unicodedata.normalize("NFKD", text)))


def _fold(ch: str) -> str:
    if _INVISIBLE.match(ch) is not None or unicodedata.category(ch) == "Cf":
        return ""
    folded = _strip_marks(unicodedata.normalize("NFKC", ch)).translate(homoglyphs()).lower()
    return _strip_marks(folded)  # lowercasing `İ` adds a mark again


def normalize(text: str, budget: ScanBudget | None = None) -> Normalized:
    """NFKC per character, combining diacritical marks dropped after NFKD, invisible characters dropped (tag
    characters too: margin.guard.injection reads them apart), TR39 confusables folded to ASCII, lowercased. What
    the text grows by is taken from `budget` first (`ScanLimitExceeded` past it); no budget: unbounded."""
    if text.isascii():
        return Normalized(text.lower())
    table: dict[int, str] = {}
    for ch in set(text):
        folded = _fold(ch)
        if folded != ch:
            table[ord(ch)] = folded
    widths = {chr(code): len(folded) for code, folded in table.items() if len(folded) != 1}
    if not widths:
        return Normalized(text.translate(table))
    if budget is not None:
        budget.take_growth(sum(map(widths.get, text, repeat(1))) - len(text))
    lengths = map(widths.get, text, repeat(1))
    offsets = array("I", chain.from_iterable(map(repeat, range(len(text)), lengths)))
    return Normalized(text.translate(table), offsets)
