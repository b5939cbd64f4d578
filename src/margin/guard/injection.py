"""Prompt-injection heuristics (OWASP LLM01) for user and tool text.

These are regular-expression heuristics, not a classifier: they catch the common, literal attack phrasings
(instruction override, persona jailbreaks, system-prompt exfiltration, fake role turns and chat-template
tokens) and the same phrasings hidden in base64, hex, rot13, Unicode tag characters, zero-width characters,
accents and combining marks, look-alike letters of other scripts, and ASCII look-alikes (`rn`, `vv`, digits:
`margin.guard.lookalike`); instruction override and exfiltration also in es, fr, de, pt, it, ru, zh, ja
(`margin.guard.injection_i18n`). Paraphrases outside the vocabulary, other languages and rules, and multi-turn
attacks are missed; benign text that quotes an attack verbatim (a security tutorial) is flagged. Use the score as
one signal, not as proof.

Each rule has a fixed score; a text's score combines its findings as a noisy-or, 1 - prod(1 - s), and the
text is flagged when that reaches the threshold (0.5 by default).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType

import regex

from margin.guard.injection_i18n import i18n_rules
from margin.guard.limits import ScanBudget, ScanLimits
from margin.guard.lookalike import skeleton, skeleton_literal, skeleton_pattern
from margin.guard.normalize import homoglyphs, normalize
from margin.guard.text import long_chunks

_FILL = r"(?:\s+[\w'-]+){0,4}?"
_OBJECTS = (
    r"(?:instructions?|prompts?|rules|directions?|directives?|guidelines?|guardrails?|constraints?|"
    r"polic(?:y|ies)|programming|restrictions?|commands?|context|system\s+(?:prompt|message))"
)
_TRIGGERS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "instruction_override": (
            "ignore", "disregard", "forget", "skip", "override", "bypass", "abandon", "neglect", "discard", "drop",
            "aside", "stop", "attention", "not follow",
        ),
        "forget_everything": ("forget", "ignore", "disregard", "aside", "never mind"),
        "new_instructions": ("instruction", "prompt", "rules", "directive", "orders"),
        "from_now_on": ("from now on",),
        "persona_jailbreak": ("you are", "anything now", "mode"),
        "no_restrictions": ("pretend", "act", "behave", "imagine", "roleplay"),
        "prompt_exfiltration": ("prompt", "instruction", "above", "message", "before this"),
        "chat_template_token": ("<|", "[inst]", "[/inst]", "<<sys>>", "<</sys>>"),
        "fake_role_turn": ("system", "developer", "admin"),
        "role_label": ("system", "assistant", "developer"),
        "decode_and_follow": ("decode", "base64", "rot13", "rot-13", "hex"),
    }
)  # fmt: skip
"""Literal words one of which must occur (in the normalized text) before a rule's regex is run at all."""

_ENGLISH: tuple[tuple[str, float, str], ...] = (
    (
        "instruction_override",
        0.9,
        rf"\b(?:ignore|disregard|forget|skip|override|bypass|abandon|neglect|discard|drop|set\s+aside|"
        rf"stop\s+(?:following|obeying)|pay\s+no\s+attention\s+to|do\s+not\s+follow)\b{_FILL}\s+"
        rf"(?:previous|prior|above|earlier|preceding|former|original|initial|system|all|any|your|these|those)"
        rf"\b(?:\s+[\w'-]+){{0,3}}?\s+{_OBJECTS}\b",
    ),
    (
        "forget_everything",
        0.8,
        r"\b(?:forget|ignore|disregard|set\s+aside|never\s+mind)\s+(?:everything|all\s+(?:of\s+)?that|what)\s+"
        r"(?:you(?:'ve|\s+have|\s+were)?\s+(?:been\s+)?(?:told|taught|instructed|given)|above|before|previously|"
        r"so\s+far|the\s+(?:developer|system|admin|operator)\s+(?:said|told|wrote|instructed))",
    ),
    (
        "new_instructions",
        0.45,
        r"(?:^|[.!:]\s)\W{0,8}(?:new|updated|revised|real|actual|true|override|admin|important)\s+"
        r"(?:system\s+)?(?:instructions?|prompt|rules|directives?|orders)\s*:",
    ),
    ("from_now_on", 0.35, r"\bfrom\s+now\s+on,?\s+(?:you|your)\s+(?:will|must|are|shall|should|only|respond)"),
    (
        "persona_jailbreak",
        0.9,
        r"\byou\s+are\s+(?:now\s+)?(?:dan\b|(?:an?\s+)?(?:[\w-]+\s+)?(?:jailbroken|unfiltered|unrestricted|"
        r"uncensored|unchained)\b|in\s+(?:developer|god|jailbreak|dan)\s+mode\b)|\b(?:do\s+anything\s+now|(?:developer|dan|jailbreak|god)\s+"
        r"mode\s+(?:is\s+)?(?:enabled|on|activated|unlocked))\b",
    ),
    (
        "no_restrictions",
        0.8,
        r"\b(?:pretend|act|behave|imagine|roleplay)\b(?:\s+[\w'-]+){0,6}?\s+(?:you\s+(?:have|had|are)\s+)?"
        r"(?:no|without(?:\s+any)?|free\s+(?:of|from))\s+(?:restrictions|rules|filters|limits|limitations|"
        r"guidelines|content\s+polic(?:y|ies)|safety|censorship|ethical)",
    ),
    (
        "prompt_exfiltration",
        0.85,
        r"\b(?:repeat|reveal|print|output|leak|dump|disclose|recite|spell\s+out|echo|regurgitate)\b"
        r"(?:\s+[\w'-]+){0,4}?\s+(?:your|the|its|all)\s+(?:\w+\s+)?(?:system\s+(?:prompt|message)|"
        r"(?:initial|original|hidden|secret|first|developer)\s+(?:instructions|prompt|message)|pre-?prompt|"
        r"instructions\s+(?:above|you\s+were\s+given)|(?:text|words|lines)\s+above)|"
        r"\b(?:repeat|reveal|print|output|dump|recite|echo)\s+everything\s+(?:above|before\s+this)",
    ),
    (
        "prompt_exfiltration",
        0.75,
        r"\b(?:show|tell|give|share|display|write|list|copy|paste|translate|summari[sz]e)\b(?:\s+[\w'-]+){0,3}?\s+"
        r"your\s+(?:\w+\s+)?(?:system\s+(?:prompt|message)|(?:initial|original|hidden|secret)\s+instructions|"
        r"instructions(?!\s+(?:for|on|to|about|how))|pre-?prompt)|\bwhat\s+(?:is|are|was|were)\s+your\s+(?:system\s+prompt|"
        r"(?:initial|original|hidden)\s+instructions)\b",
    ),
    (
        "chat_template_token",
        0.9,
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|start_header_id|end_header_id|"
        r"eot_id)\|>|\[/?inst\]|<</?sys>>",
    ),
    (
        "fake_role_turn",
        0.75,
        r"^\W{0,4}(?:system|developer|admin)\s*:\s*(?:you\s|from\s+now|new\s|ignore|always|never|the\s+user|"
        r"override|important|disregard)",
    ),
    ("role_label", 0.35, r"^\W{0,4}(?:system|assistant|developer)\s*:"),
    (
        "decode_and_follow",
        0.55,
        r"\b(?:decode|base64|rot-?13|hex)\b(?:\s+[\w'-]+){0,6}?\s+(?:and\s+|then\s+)?(?:follow|execute|obey|"
        r"comply|carry\s+out|act\s+on|do\s+what)",
    ),
)
_Rule = tuple[str, float, re.Pattern[str], tuple[str, ...], tuple[tuple[str, str], ...], int]
"""(name, score, pattern over normalized text, literal strings one of which must occur first, the words every
match starts with: each as this reading spells it and as the skeleton does, how near an occurrence of the literal
strings every match lies: 0, anywhere). A rule with words runs only when
the text has one of them as a word, and is tried only where one starts (`_anchored`)."""
_WORD_RE = re.compile(r"\w+")
_WORD_CHAR_RE = re.compile(r"\w")
_SIGNS = "@$|"
"""Signs that the look-alike skeleton reads as letters (`margin.guard.lookalike`)."""


@functools.cache
def compiled_rules() -> tuple[tuple[_Rule, ...], tuple[_Rule, ...], tuple[_Rule, ...]]:
    """The rules over the normalized text (English, then `injection_i18n`'s other languages), the same rules over
    its look-alike skeleton (`margin.guard.lookalike`: `prornpt`, `1gn0re`, `lgnore`), and the English ones alone
    (for the rot13 reading: other languages are not looked for in rot13). Built once, with the first detector
    (folding the other languages' patterns needs the look-alike table), not on import."""
    english: tuple[_Rule, ...] = tuple(
        (name, score, re.compile(pattern, re.MULTILINE), _TRIGGERS[name], (), 0) for name, score, pattern in _ENGLISH
    )
    rules = english + tuple(
        (
            r.name,
            r.score,
            re.compile(r.pattern, re.MULTILINE),
            r.substrings,
            tuple((w, skeleton_literal(w)) for w in r.first),
            r.reach,
        )
        for r in i18n_rules()
    )
    skeletons = tuple(
        (
            name,
            score,
            re.compile(skeleton_pattern(rx.pattern), re.MULTILINE),
            tuple(map(skeleton_literal, substrings)),
            tuple((folded, folded) for _, folded in firsts),
            reach,
        )
        for name, score, rx, substrings, firsts, reach in rules
    )
    return rules, skeletons, english


_BASE64_RE = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX_RE = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}:?){12,}(?![0-9A-Fa-f])")
_BLOB_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (("base64", _BASE64_RE), ("hex", _HEX_RE))
# Unicode tag characters (U+E0020-E007E) mirror printable ASCII and are drawn as nothing: text some models read and
# a person does not see ("ASCII smuggling"), read apart from the visible text (`_hidden_tags`)
_TAG_RE = regex.compile("[\U000e0020-\U000e007e]")
_LAST_TAG_RE = regex.compile("(?r)[\U000e0020-\U000e007e]")
_NOT_TAG_RE = regex.compile("[^\U000e0020-\U000e007e]+")
_OTHER_INVISIBLE_RE = regex.compile("[[\\p{Default_Ignorable_Code_Point}\\p{Cf}]--[\U000e0020-\U000e007e]]+", regex.V1)
_TAGS_TO_ASCII = {code: code - 0xE0000 for code in range(0xE0020, 0xE007F)}
_PAYLOAD_MIN_SCORE = 0.7
MAX_HITS_PER_RULE = 8
"""Hits of one rule pattern reported per text read (the text, its rot13 reading, each decoded blob)."""
_LETTERS_RE = re.compile(r"[a-z]{4,}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule hit: offsets point into the original text (encoded payloads: the whole blob)."""

    rule: str
    score: float
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class InjectionVerdict:
    findings: tuple[Finding, ...]
    score: float
    flagged: bool


def combined_score(findings: list[Finding] | tuple[Finding, ...]) -> float:
    """Noisy-or of the findings' scores, one finding per rule (repeats of a rule do not add up)."""
    best: dict[str, float] = {}
    for f in findings:
        best[f.rule] = max(best.get(f.rule, 0.0), f.score)
    miss = 1.0
    for score in best.values():
        miss *= 1.0 - score
    return round(1.0 - miss, 4)


_PLAIN, _SKELETON, _ENGLISH_ONLY = 0, 1, 2
"""Which of `compiled_rules()` a reading uses."""


def _rule_hits(
    normalized: str,
    reading: int = _PLAIN,
    skip: frozenset[str] = frozenset(),
    skeleton_words: frozenset[str] | None = None,
    budget: ScanBudget | None = None,
) -> list[tuple[str, float, int, int]]:
    """The first `MAX_HITS_PER_RULE` hits of each rule pattern (rules named in `skip` not read): a pattern's score
    is fixed, so more hits of it change neither the text's score nor its rules, only the work (a text of 140,000
    `[INST]` built as many findings); for the same reason a rule's other patterns (another language's) are not
    run once one of it scoring as much has hit. `skeleton_words`: the words of the text's skeleton, found already,
    to look the rules' first words up in (by their skeleton spelling); by default the text's own, found on first
    need.
    `budget`: each anchored attempt taken from it (`ScanLimitExceeded` past its cap); none: a fresh one."""
    budget = budget or ScanBudget(ScanLimits())
    hits: list[tuple[str, float, int, int]] = []
    own: frozenset[str] | None = None
    best: dict[str, float] = {}  # a rule's best score so far: another pattern of it scoring no more adds nothing
    for name, score, rx, substrings, firsts, reach in compiled_rules()[reading]:
        if name in skip or best.get(name, -1.0) >= score:
            continue
        if firsts:
            if skeleton_words is not None:
                starts = [word for word, folded in firsts if folded in skeleton_words]
            else:
                own = frozenset(_WORD_RE.findall(normalized)) if own is None else own
                starts = [word for word, _ in firsts if word in own]
            if not starts:
                continue
            found = islice(_anchored(normalized, rx, starts, budget), MAX_HITS_PER_RULE)
        elif any(literal in normalized for literal in substrings):
            stretches = _near(normalized, substrings, reach) if reach else [(0, len(normalized))]
            found = islice((m for lo, hi in stretches for m in rx.finditer(normalized, lo, hi)), MAX_HITS_PER_RULE)
        else:
            continue
        before = len(hits)
        hits.extend((name, score, m.start(), m.end()) for m in found)
        if len(hits) > before:
            best[name] = max(best.get(name, 0.0), score)
    return hits


def _anchored(text: str, rx: re.Pattern[str], starts: list[str], budget: ScanBudget) -> Iterator[re.Match[str]]:
    """Matches of `rx` tried only where a word starts with one of `starts` (every match starts so; a word that
    another one begins is not searched again): one `str.find` pass per word, and a match attempt at each word
    start found, instead of an attempt at every character (the other languages' long alternations cost 100-170 µs
    per KB that way). Each attempt is taken from `budget`: a text dense with first words fails closed at its cap
    rather than costing each rule an attempt per word."""
    for word in starts:
        if any(other != word and word.startswith(other) for other in starts):
            continue
        at = text.find(word)
        while at >= 0:
            if at == 0 or not _WORD_CHAR_RE.match(text, at - 1):
                budget.take_rule_attempt()
                if (m := rx.match(text, at)) is not None:
                    yield m
            at = text.find(word, at + 1)


def _near(text: str, literals: tuple[str, ...], reach: int) -> list[tuple[int, int]]:
    """The stretches of `text` within `reach` characters of an occurrence of one of `literals`, merged where they
    overlap (each character in one at most): where a rule whose matches hold one of them may match."""
    spans: list[tuple[int, int]] = []
    for literal in literals:
        at = text.find(literal)
        while at >= 0:
            spans.append((max(at - reach, 0), min(at + len(literal) + reach, len(text))))
            at = text.find(literal, at + 1)
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _blob_candidates(text: str) -> list[tuple[str, re.Pattern[str], int, int]]:
    """Whitespace-free chunks long enough to hold an encoded instruction (16+ characters)."""
    return [(kind, rx, start, end) for start, end in long_chunks(text, 16) for kind, rx in _BLOB_PATTERNS]


def _hidden_tags(text: str) -> tuple[str, int, int, str] | None:
    """The text's tag characters alone, as the ASCII they mirror: other invisible characters between them dropped,
    anything visible between them one space. So an attack in tags reads whole however it is split (zero-width or
    visible spaces) or glued to a visible word, while the rules read the visible text with the tags dropped (a tag
    inside a visible word hides nothing). None without tags."""
    first = _TAG_RE.search(text)
    if first is None:
        return None
    last = _LAST_TAG_RE.search(text)
    end = last.end() if last is not None else first.end()
    hidden = _NOT_TAG_RE.sub(" ", _OTHER_INVISIBLE_RE.sub("", text)).translate(_TAGS_TO_ASCII).strip()
    return "tags", first.start(), end, hidden


def _decoded_blobs(text: str) -> list[tuple[str, int, int, str]]:
    """(kind, start, end, decoded text) for the text's tag characters (`_hidden_tags`) and for base64 and hex blobs
    that decode to printable UTF-8."""
    blobs: list[tuple[str, int, int, str]] = []
    if not text.isascii() and (tags := _hidden_tags(text)) is not None:
        blobs.append(tags)
    for kind, rx, start, end in _blob_candidates(text):
        for m in rx.finditer(text, start, end):
            raw = m.group()
            try:
                if kind == "hex":
                    data = bytes.fromhex(raw.replace(":", ""))
                else:
                    data = base64.b64decode(raw.replace("-", "+").replace("_", "/") + "=" * (-len(raw) % 4))
                decoded = data.decode("utf-8")
            except (ValueError, binascii.Error):
                continue
            if decoded and sum(ch.isprintable() or ch.isspace() for ch in decoded) / len(decoded) > 0.95:
                blobs.append((kind, m.start(), m.end(), decoded))
    return blobs


class InjectionDetector:
    """Scores text for prompt-injection patterns. Stateless and cheap: share one instance."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        homoglyphs()  # the look-alike table (0.1-0.2 s of JSON) is built with the detector at startup, not on a request
        compiled_rules()  # and the rules, some of them folded with it

    def check(self, text: str, budget: ScanBudget | None = None) -> list[Finding]:
        """Rule hits in `text` (the first `MAX_HITS_PER_RULE` of each pattern), including ones inside decoded
        base64/hex blobs and rot13 text. What normalizing the text adds to it is taken from `budget` (the
        request's; by default a fresh one): `ScanLimitExceeded` past it."""
        budget = budget or ScanBudget(ScanLimits())
        norm = normalize(text, budget)
        look = skeleton(norm)
        words = frozenset(_WORD_RE.findall(look.text))
        # the skeleton's words are the text's words folded, unless a sign it folds to a letter joined two: then the
        # text's own words are found apart (one word set per text, not two)
        shared = None if any(sign in norm.text for sign in _SIGNS) else words
        plain = _rule_hits(norm.text, _PLAIN, skeleton_words=shared, budget=budget)
        findings = [Finding(name, score, *norm.original_span(s, e)) for name, score, s, e in plain]
        # the skeleton only for the rules the text itself did not trip: one finding per rule, not two
        for name, score, s, e in _rule_hits(look.text, _SKELETON, frozenset(h[0] for h in plain), words, budget):
            findings.append(Finding(name, score, *look.original_span(s, e)))
        for kind, start, end, decoded in _decoded_blobs(text):
            inner = [score for _, score, _, _ in _rule_hits(normalize(decoded, budget).text, budget=budget)]
            if inner and max(inner) >= _PAYLOAD_MIN_SCORE:
                findings.append(Finding(f"encoded_{kind}", max(inner), start, end))
        if _LETTERS_RE.search(norm.text):
            rotated = codecs.encode(norm.text, "rot13")
            for _, score, s, e in _rule_hits(rotated, _ENGLISH_ONLY):
                if score >= _PAYLOAD_MIN_SCORE:
                    findings.append(Finding("encoded_rot13", score, *norm.original_span(s, e)))
        return sorted(findings, key=lambda f: (f.start, f.rule))

    def assess(self, text: str, budget: ScanBudget | None = None) -> InjectionVerdict:
        """Findings, their combined score, and whether the score reaches the threshold."""
        findings = tuple(self.check(text, budget))
        score = combined_score(findings)
        return InjectionVerdict(findings, score, score >= self.threshold)
