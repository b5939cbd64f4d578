"""A second reading of a normalized text for the injection rules: look-alikes that are ASCII themselves.

`normalize` folds characters of other scripts onto the ASCII letter they imitate, one character at a time. What
it cannot fold without breaking ordinary words is left to this reading: a digit or sign for a letter (`0` for
`o`, `1` for `l` or `i`, `3` `4` `5` `7` `@` `$`), `rn` for `m` and `vv` for `w`, and `l`, `1`, `|` for `i`.
Unicode TR39 gives these as confusable too (its skeleton maps `m` → `rn`, and `1`, `I`, `l`, `|` to one
prototype), but folding them in the text the rules read would turn `modern` into `modem` and every `all`
into `aii`. So both sides are folded here, the same way: the text (`skeleton`) and each rule's literal
letters (`skeleton_pattern`): `prornpt`, `systern`, `1gn0re` and `lgnore` read as `prompt`, `system` and
`ignore` do in their own skeleton, while an ordinary word only ever meets a rule word that it already
looks like. The detector reads the skeleton only for rules that found nothing in the text itself, so it
never adds a second finding for the same rule.

Linear: one `str.replace` per pair, one `str.translate`, one `str.find` step per folded pair; a span is mapped
back by bisection over the folded pairs' places, then through the normalized text's offsets.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from dataclasses import dataclass

from margin.guard.normalize import Normalized

_PAIRS = (("rn", "m"), ("vv", "w"))
"""Two ASCII letters drawn like one (TR39: `rn` is `m`'s skeleton; `vv` is drawn as `w` in most fonts)."""
_SINGLES = str.maketrans(
    {"0": "o", "1": "l", "i": "l", "|": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
"""One ASCII character for a letter: TR39's one prototype for `1`, `I`, `l`, `|` (`l`) and `0`/`O`, and the digits
and signs of "leet" spelling."""
_GONE = "\u200b"
"""Marks the second character of a replaced pair: `normalize` drops every zero-width space, so none is left."""
_LITERALS = re.compile(r"\\.|[a-z]+")


def _fold_pairs(text: str) -> str:
    for pair, letter in _PAIRS:
        text = text.replace(pair, letter + _GONE)
    return text


def skeleton_literal(word: str) -> str:
    """A literal string (a rule's trigger word) as `skeleton` reads it."""
    return _fold_pairs(word).replace(_GONE, "").translate(_SINGLES)


def skeleton_pattern(pattern: str) -> str:
    """A rule's regular expression with its literal lower-case letters folded like the text (`skeleton`); escapes
    (`\\b`, `\\s`, `\\w`), digits (quantifiers) and signs (syntax) are left as they are."""
    return _LITERALS.sub(lambda m: m.group() if m.group().startswith("\\") else skeleton_literal(m.group()), pattern)


@dataclass(frozen=True, slots=True)
class Skeleton:
    """The skeleton of a normalized text, and where in it each folded pair's letter stands (`pairs`, increasing):
    a character at skeleton index `j` comes from normalized index `j + (pairs before j)`, and a pair's letter from
    that index and the next."""

    text: str
    norm: Normalized
    pairs: array[int] | None = None

    def _normalized(self, index: int) -> tuple[int, int]:
        """(first, last) index in the normalized text of skeleton character `index`."""
        if self.pairs is None:
            return index, index
        before = bisect_left(self.pairs, index)
        first = index + before
        is_pair = before < len(self.pairs) and self.pairs[before] == index
        return first, first + is_pair

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Map a [start, end) range of the skeleton onto the original text (a folded pair: both its characters)."""
        if not self.text:
            return self.norm.original_span(start, end)
        first, _ = self._normalized(start)
        _, last = self._normalized(max(start, end - 1))
        return self.norm.original_span(first, last + 1)


def skeleton(norm: Normalized) -> Skeleton:
    """The normalized text with `rn`/`vv` read as one letter and digits, signs and `i` folded (`_SINGLES`); its
    spans still map onto the original text. Each folded pair is found by `str.find` once (a loop step per pair,
    not per character)."""
    marked = _fold_pairs(norm.text)
    at = marked.find(_GONE)
    if at < 0:
        return Skeleton(norm.text.translate(_SINGLES), norm)
    pairs = array("I")
    while at >= 0:
        pairs.append(at - 1 - len(pairs))  # the pair's letter, in the skeleton (the marks before it gone)
        at = marked.find(_GONE, at + 1)
    return Skeleton(marked.replace(_GONE, "").translate(_SINGLES), norm, pairs)
