"""SECRET recognizer: vendor key shapes, credential values, and generic random-looking tokens.

Vendor shapes (OpenAI/Anthropic `sk-…`, Stripe, AWS `AKIA…`, GitHub, GitLab, Slack, Google `AIza…`, Hugging
Face, npm, JWTs, PEM private keys) are reported whole. After a credential word (`password=…`, `api_key: …`,
`secret is …`, `Bearer …`) and in URL user info (`postgres://user:PASSWORD@host`) only the value is the span.

Generic tokens are reported only when they look random: at least 20 characters, upper and lower case, a
Shannon entropy of at least 3.5 bits per character, and short word-like pieces (mean piece length at most 3,
or 2.5 without digits; identifiers like `getUserAccountBalanceV2` are made of whole words). Paths (leading
`/`, or pieces that are words and numbers) and digests written with their algorithm (`sha256:…`, `SHA256:`
SSH fingerprints) are not secrets.

Policy on hex: strings made only of hex digits (git SHAs, SHA-256 digests, UUIDs, hash ids) are never
reported as generic secrets. They are far more often hashes than keys in chat and log text; a hex key is
still found when it follows a credential word (`api_key=…`, `token: …`)."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator

from margin.guard.checksums import mean_segment_length, shannon_entropy
from margin.guard.spans import SECRET, Span
from margin.guard.text import context_before, long_chunks

_VENDOR_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"(?<![\w-])sk-(?:proj-|svcacct-|admin-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
        r"(?<![\w-])(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}",  # Stripe
        r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Za-z0-9])",  # AWS access key id
        r"(?<![\w-])gh[pousr]_[A-Za-z0-9]{36,}",  # GitHub tokens
        r"(?<![\w-])github_pat_[A-Za-z0-9_]{22,}",  # GitHub fine-grained PAT
        r"(?<![\w-])glpat-[A-Za-z0-9_-]{20,}",  # GitLab PAT
        r"(?<![\w-])xox[baprs]-[A-Za-z0-9-]{10,}",  # Slack
        r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])",  # Google API key
        r"(?<![\w-])hf_[A-Za-z0-9]{30,}",  # Hugging Face
        r"(?<![\w-])npm_[A-Za-z0-9]{36}(?![\w-])",  # npm
        r"(?<![\w.-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
    )
)
_PEM_BEGIN_RE = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
PEM_MAX_BODY = 8000
"""A PEM body longer than this is not looked for: the header alone is reported."""
_KEY_VALUE_RE = re.compile(
    r"(?i)(?<![a-z])(?:password|passwd|pwd|pass|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|"
    r"secret[_-]?key|auth[_-]?token|access[_-]?token|token|private[_-]?key)\b[\"']?\s*(?:[:=]|\bis\b)\s*[\"']?"
    r"([^\s\"'`,;<>]{8,200})"
)
_URL_PASSWORD_RE = re.compile(r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:([^\s/@]{3,128})@")
_BEARER_RE = re.compile(r"\b[Bb]earer\s+([A-Za-z0-9._~+/-]{20,}=*)")
_TOKEN_RE = re.compile(r"(?<![\w+/.-])[A-Za-z0-9_+/-]{20,}={0,2}(?![\w+/=-])")
_CREDENTIAL_WORDS = ("pass", "pwd", "secret", "key", "token", "bearer")
_DIGEST_PREFIX_RE = re.compile(r"(?i)(?:sha-?\d{0,3}|md5)[:=]$")
_HEX_RE = re.compile(r"^[0-9A-Fa-f-]+$")
_SEPARATOR_RE = re.compile(r"[/_.+-]+")
_WORD_PIECE_RE = re.compile(r"^(?:[A-Z]?[a-z]+|[A-Z]+|\d+|[A-Za-z]\d{1,2}|[A-Z][a-z]+\d{1,2})$")
_VENDOR_MARKERS: tuple[str, ...] = (
    "sk-", "_live_", "_test_", "AKIA", "ASIA", "ABIA", "ACCA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "glpat-", "xox", "AIza", "hf_", "npm_", "eyJ", "-----BEGIN",
)  # fmt: skip


def _wordy_path(token: str) -> bool:
    """`reports/2024/Q2_Revenue_v3`, `api-server_build-7`: separated pieces that are words or numbers."""
    pieces = [p for p in _SEPARATOR_RE.split(token) if p]
    if len(pieces) < 3:
        return False
    return sum(bool(_WORD_PIECE_RE.match(p)) for p in pieces) >= 0.75 * len(pieces)


def looks_random(token: str) -> bool:
    """The generic-token test: long, upper and lower case, high entropy, short word pieces, not hex or a path.

    Tokens without digits need stronger evidence (mean piece length at most 2.5 instead of 3).
    """
    if len(token) < 20 or token.startswith("/") or _HEX_RE.match(token) or _wordy_path(token):
        return False
    if not (any(c.isupper() for c in token) and any(c.islower() for c in token)):
        return False
    limit = 3.0 if any(c.isdigit() for c in token) else 2.5
    return shannon_entropy(token) >= 3.5 and mean_segment_length(token) <= limit


def _credential_values(text: str) -> Iterator[Span]:
    for rx in (_KEY_VALUE_RE, _BEARER_RE):
        for m in rx.finditer(text):
            value = m.group(1)
            if sum(ch.isalnum() for ch in value) < 6 or value.isalpha():
                continue
            yield Span(SECRET, m.start(1), m.end(1), value, 0.9)


def _pem_keys(text: str) -> Iterator[Span]:
    """PEM private keys, header to matching footer (or the header alone). The footer is looked for with
    `str.find` only up to the next header (or `PEM_MAX_BODY`), so the whole text is read once however many
    headers it holds (one lazy regex per header re-read up to 8 KB after each). Headers are found one ahead of
    the key reported, so a caller that stops early has not made the regex find every header of the text."""
    headers = _PEM_BEGIN_RE.finditer(text)
    header = next(headers, None)
    while header is not None:
        following = next(headers, None)
        limit = header.end() + PEM_MAX_BODY
        if following is not None:
            limit = min(limit, following.start())
        footer = f"-----END {header.group(1)}-----"
        found = text.find(footer, header.end(), limit + len(footer))
        end = header.end() if found < 0 else found + len(footer)
        yield Span(SECRET, header.start(), end, text[header.start() : end], 0.99)
        header = following


def _unrivalled(strongest: list[tuple[int, int, bool]]) -> tuple[list[int], list[int]]:
    """(starts, ends) of the PEM blocks among `strongest` (every 0.99 span of a text: vendor keys and PEM blocks,
    as (start, end, is_pem)) that no other one overlaps. Nothing outranks such a block, so overlap resolution keeps
    it and drops whatever lies inside it."""
    ranked = sorted(strongest)
    starts: list[int] = []
    ends: list[int] = []
    reach = -1  # the furthest end of the spans before this one
    for index, (start, end, is_pem) in enumerate(ranked):
        after = ranked[index + 1][0] if index + 1 < len(ranked) else end
        if is_pem and reach <= start and after >= end:
            starts.append(start)
            ends.append(end)
        reach = max(reach, end)
    return starts, ends


def _random_tokens(text: str, blocks: tuple[list[int], list[int]]) -> Iterator[Span]:
    """Generic random-looking tokens, except those inside a PEM block that nothing outranks (its body's lines:
    resolving overlaps would drop them, and a key of 50 lines would otherwise be 51 readings of one value)."""
    starts, ends = blocks
    for start, end in long_chunks(text, 20):
        for m in _TOKEN_RE.finditer(text, start, end):
            block = bisect_right(starts, m.start()) - 1
            if block >= 0 and m.end() <= ends[block]:
                continue
            if looks_random(m.group()) and not _DIGEST_PREFIX_RE.search(context_before(text, m.start(), 8)):
                yield Span(SECRET, m.start(), m.end(), m.group(), 0.6)


def find_secrets(text: str) -> Iterator[Span]:
    strongest: list[tuple[int, int, bool]] = []
    if any(marker in text for marker in _VENDOR_MARKERS):
        for rx in _VENDOR_PATTERNS:
            for m in rx.finditer(text):
                strongest.append((m.start(), m.end(), False))
                yield Span(SECRET, m.start(), m.end(), m.group(), 0.99)
        if "-----BEGIN" in text:
            for key in _pem_keys(text):
                strongest.append((key.start, key.end, True))
                yield key
    if "://" in text:
        for m in _URL_PASSWORD_RE.finditer(text):
            yield Span(SECRET, m.start(1), m.end(1), m.group(1), 0.97)  # outranks the e-mail reading of `pw@host`
    lowered = text.lower()
    if any(word in lowered for word in _CREDENTIAL_WORDS):
        yield from _credential_values(text)
    yield from _random_tokens(text, _unrivalled(strongest))
