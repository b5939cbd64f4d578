"""Names, ids and numbers in a question, so the semantic cache never answers one user's question about order
12345 (or Jane, or 4 kg) with the answer stored for order 12346 (or John, or 5 kg).

Embeddings place "status of order 12345" and "status of order 12346" almost on top of each other, so a
similarity threshold alone cannot keep them apart. A stored answer is served only when both questions hold
the same identifiers in the same order, compared case-insensitively, where a word is an identifier in either
question if it:

* holds a digit (numbers, ids, placeholders such as `<EMAIL_1>`) or `@`, `/`, `:` (addresses, paths, URLs);
* has an upper-case letter after its first (`IBM`, `iPhone`, `McDonald`);
* starts with a capital and is not the first word of a sentence (a name), or is a sentence's first word that
  is not a common sentence opener ("What", "How", "Please", …);
* follows a word that holds a digit (the unit or thing counted: `5 miles` is not `5 km`, and "convert 5 miles to
  km" is not "convert 5 km to miles": served before at δ 1 %, a wrong conversion);
* negates (`not`, `no`, `never`, `without`, a word ending in n't, …): "Is it safe to eat raw chicken?" is not
  "Is it not safe …". A negating prefix (`unsafe`) is not seen.

So "What is the capital of France?" and "what's the capital city of france" may share an answer (both hold
`france`), "… of Spain" may not. Limits: lower-case names ("ask john") are not recognised; in languages that
capitalise every noun (German) most nouns count as identifiers, which only costs hits."""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD_RE = re.compile(r"\w+(?:[.,@:/+'’-]\w+)*")
_SENTENCE_END = frozenset(".!?:;\n\"'“(")
_OPENERS = frozenset(
    (
        "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "before", "but", "by",
        "can", "could", "define", "describe", "did", "do", "does", "each", "explain", "for", "from", "give", "had",
        "has", "have", "he", "hello", "help", "her", "here", "hey", "hi", "his", "how", "i", "if", "in", "is", "it",
        "its", "just", "let", "list", "make", "may", "might", "my", "no", "not", "now", "of", "ok", "okay", "on",
        "one", "or", "our", "please", "quick", "she", "should", "show", "so", "some", "summarise", "summarize", "tell",
        "thank", "thanks", "that", "the", "their", "then", "there", "these", "they", "this", "those", "to",
        "translate", "under", "we", "what", "when", "where", "which", "who", "whom", "whose", "why", "will", "with",
        "would", "write", "yes", "you", "your",
    )
)  # fmt: skip
"""Common first words of a question or request: capitalised by grammar, not because they name something."""


_NEGATIONS = frozenset(("not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot"))
"""Words that turn a question into its opposite, so two questions that differ by one are never one answer."""


def _holds_digit(word: str) -> bool:
    return any(ch.isdigit() for ch in word)


def _is_identifier(word: str, sentence_start: bool) -> bool:
    if _holds_digit(word) or any(ch in word for ch in "@/:"):
        return True
    folded = word.casefold()
    if folded in _NEGATIONS or folded.endswith(("n't", "n’t")):
        return True
    if any(ch.isupper() for ch in word[1:]):
        return True
    if not word[:1].isupper():
        return False
    if not sentence_start:
        return word != "I"
    return re.split(r"['’]", word.casefold())[0] not in _OPENERS


def _sentence_start(text: str, position: int) -> bool:
    """Whether the word at `position` opens a sentence (reads back over spaces only: linear over a text)."""
    index = position - 1
    while index >= 0 and text[index] in " \t":
        index -= 1
    return index < 0 or text[index] in _SENTENCE_END


@dataclass(frozen=True, slots=True)
class Identifiers:
    """A question's words (case-folded, in order) and those among them that look like identifiers."""

    words: tuple[str, ...]
    marked: frozenset[str]

    @classmethod
    def of(cls, text: str) -> Identifiers:
        words: list[str] = []
        marked: set[str] = set()
        counted = False  # the word before held a digit: this one is what it counts
        for match in _WORD_RE.finditer(text):
            word = match.group()
            folded = word.casefold()
            words.append(folded)
            if counted or _is_identifier(word, _sentence_start(text, match.start())):
                marked.add(folded)
            counted = _holds_digit(word)
        return cls(tuple(words), frozenset(marked))

    def compatible(self, other: Identifiers) -> bool:
        """Both questions hold the same identifiers (as either sees them) in the same order."""
        marked = self.marked | other.marked
        if not marked:
            return True
        return [w for w in self.words if w in marked] == [w for w in other.words if w in marked]
