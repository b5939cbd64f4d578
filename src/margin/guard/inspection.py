"""What the guard does to one request and its answer, as plain functions of JSON and a policy, so the guard
step can run them inline for small texts and on a worker thread for large ones.

`Inspector.request` checks the request against the caps first (`ScanLimits`), then the injection heuristics on
user and tool text, then PII in every string that leaves for an upstream. It returns what it found (counts by
type, never values), the redacted request when the policy redacts, and the error to answer with when the policy
blocks. A policy that redacts or blocks cannot be honoured on text past the caps, so such a request is refused
(413 `guard_scan_limit`); a policy that only logs records `scan_limit` and lets it pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from margin.errors import InvalidRequest, MarginError
from margin.guard.injection import InjectionDetector
from margin.guard.limits import ScanBudget, ScanLimitExceeded, ScanLimits
from margin.guard.pii import DIGIT_RUN_RE, PiiScanner
from margin.guard.redaction import Redaction, redact
from margin.guard.stream import WITHHELD, StreamGuard
from margin.guard.texts import UNTRUSTED_ROLES, answer_text, request_texts, rewrite_answer, rewrite_request
from margin.thinking import ANTHROPIC_ONLY, REASONING_DETAILS, REASONING_KEYS
from margin.types import choices_of

PROMPT_LOG_MAX_CHARS = 20_000


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """The parts of a caller's policy the guard reads, with their defaults filled in."""

    pii: str = "off"  # off | log | redact | block
    injection: str = "off"  # off | log | block
    pii_output: str = "off"  # off | log | redact
    restore_pii: bool = False
    log_prompts: bool = False

    @classmethod
    def of(cls, policy: Any) -> GuardPolicy:
        if policy is None:
            return cls()
        return cls(
            policy.pii or "off",
            policy.injection or "off",
            policy.pii_output or "off",
            bool(policy.restore_pii),
            bool(policy.log_prompts),
        )

    @property
    def reads_request(self) -> bool:
        return self.pii != "off" or self.injection != "off" or self.log_prompts

    @property
    def enforcing(self) -> bool:
        """Whether the policy changes or refuses requests (so it must read all of them)."""
        return self.pii in ("redact", "block") or self.injection == "block"


@dataclass(slots=True)
class RequestFindings:
    raw: dict[str, Any] | None = None  # the redacted request, when the policy redacts and something was found
    state: Redaction | None = None  # placeholders ↔ originals of this request
    record: dict[str, Any] = field(default_factory=dict)  # for the ledger's `guard` column: counts, never values
    prompt_log: str | None = None
    error: MarginError | None = None


NUMBER_CHECK_COST = 1000
"""A number-plan check (0.1-0.5 ms) costs about as much as scanning 1,000 characters of prose."""


def text_size(texts: list[tuple[str, str]]) -> int:
    return sum(len(text) for _, text in texts)


def scan_cost(texts: list[tuple[str, str]], inline_chars: int) -> int:
    """The scan's cost in characters of prose: its length, plus `NUMBER_CHECK_COST` per run of digits (each may
    need a phone validation). Digit runs are only counted when the length alone would allow an inline scan."""
    size = text_size(texts)
    if size > inline_chars:
        return size
    return size + NUMBER_CHECK_COST * sum(len(DIGIT_RUN_RE.findall(text)) for _, text in texts)


class Inspector:
    """The guard's work on requests and answers. Stateless between requests: share one."""

    def __init__(self, scanner: PiiScanner, detector: InjectionDetector, limits: ScanLimits) -> None:
        self.scanner = scanner
        self.detector = detector
        self.limits = limits

    def request(self, raw: dict[str, Any], texts: list[tuple[str, str]], policy: GuardPolicy) -> RequestFindings:
        """`texts` are `request_texts(raw)` (the caller has them already to size the work)."""
        found = RequestFindings()
        budget = ScanBudget(self.limits)
        try:
            budget.take_chars(text_size(texts))
            if policy.injection != "off":
                self._injection(texts, policy.injection == "block", budget, found)
            if found.error is None and (policy.pii != "off" or policy.log_prompts):
                self._pii(raw, texts, policy, Redaction(self.scanner, budget), found)
        except ScanLimitExceeded as exc:
            found.record["scan_limit"] = exc.message
            found.raw, found.prompt_log = None, None
            if policy.enforcing:
                found.error = exc
        return found

    def _injection(self, texts: list[tuple[str, str]], block: bool, budget: ScanBudget, found: RequestFindings) -> None:
        """What normalizing the texts adds to them counts against `budget` (`guard.max_scan_chars`)."""
        verdicts = [self.detector.assess(text, budget) for where, text in texts if where in UNTRUSTED_ROLES]
        flagged = [v for v in verdicts if v.flagged]
        if not flagged:
            return
        rules = sorted({f.rule for v in flagged for f in v.findings})
        score = max(v.score for v in flagged)
        found.record["injection"] = {"score": round(score, 3), "rules": rules, "action": "block" if block else "log"}
        if block:
            found.error = InvalidRequest(
                f"the request looks like a prompt injection ({', '.join(rules)}); this key's policy blocks it",
                code="prompt_injection_detected",
            )

    def _pii(
        self,
        raw: dict[str, Any],
        texts: list[tuple[str, str]],
        policy: GuardPolicy,
        state: Redaction,
        found: RequestFindings,
    ) -> None:
        """Scan `texts` (the request's strings in walk order); only when something was found walk the request
        again to put the redacted strings in place, in the same order."""
        results = [redact(text, state) for _, text in texts]
        redacted = raw
        if any(new is not old for new, (_, old) in zip(results, texts, strict=True)):
            replacements = iter(results)
            redacted = rewrite_request(raw, lambda _text: next(replacements))
        found.state = state
        counts = state.counts()
        if counts:
            found.record.update(pii=counts, pii_action=policy.pii)
        if policy.pii == "block" and counts:
            listed = ", ".join(f"{n} {entity}" for entity, n in counts.items())
            found.error = InvalidRequest(
                f"the request contains sensitive data ({listed}) and this key's policy blocks it",
                code="pii_detected",
            )
        if policy.pii == "redact" and counts:
            found.raw = redacted
        if policy.log_prompts:
            text = "\n".join(text for _, text in request_texts(redacted, everything=False))
            found.prompt_log = text[:PROMPT_LOG_MAX_CHARS]

    def answer_pii(self, payload: dict[str, Any], policy: GuardPolicy) -> tuple[bool, dict[str, Any]]:
        """PII in a whole answer (`pii_output`): redacted in place or only counted. (changed, record). An
        answer over the caps is withheld when the policy redacts (never released unread)."""
        budget = ScanBudget(self.limits)
        state = Redaction(self.scanner, budget)
        changed = False
        try:
            text = answer_text(payload)
            budget.take_chars(len(text))
            if policy.pii_output == "redact":
                changed = rewrite_answer(payload, lambda part: redact(part, state), _thinking(state, budget))
            else:
                redact(text, state)
        except ScanLimitExceeded as exc:
            if policy.pii_output == "redact":
                _withhold(payload)
                changed = True
            return changed, {"pii_output_action": policy.pii_output, "pii_output_scan_limit": exc.message}
        counts = state.counts()
        return changed, ({"pii_output": counts, "pii_output_action": policy.pii_output} if counts else {})

    def delivered_pii(self, text: str) -> dict[str, Any]:
        """Counts of PII in a streamed answer's delivered text (`pii_output: log`)."""
        budget = ScanBudget(self.limits)
        try:
            budget.take_chars(len(text))
            state = Redaction(self.scanner, budget)
            redact(text, state)
        except ScanLimitExceeded as exc:
            return {"pii_output_action": "log", "pii_output_scan_limit": exc.message}
        counts = state.counts()
        return {"pii_output": counts, "pii_output_action": "log"} if counts else {}

    def stream_guard(self, policy: GuardPolicy, restore_state: Redaction | None) -> StreamGuard | None:
        """The rewriter for a streamed answer, or None when the policy leaves streams as they are."""
        redact_state = Redaction(self.scanner, ScanBudget(self.limits)) if policy.pii_output == "redact" else None
        if restore_state is None and redact_state is None:
            return None
        return StreamGuard(restore=restore_state, redact=redact_state)


def _thinking(state: Redaction, budget: ScanBudget) -> Callable[[str, bool], str]:
    """How a whole answer's thinking block (or `reasoning_details` entry) is redacted: with the answer's
    placeholders; a text repeating the message's reasoning is read again (its characters count again) but its
    values are not counted again."""

    def rewrite(text: str, new: bool) -> str:
        if not new:
            budget.take_chars(len(text))
        return redact(text, state, count=new)

    return rewrite


def _withhold(payload: dict[str, Any]) -> None:
    for choice in choices_of(payload):
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message["content"] = WITHHELD
            message.pop("tool_calls", None)
            for key in (*REASONING_KEYS, REASONING_DETAILS, *ANTHROPIC_ONLY):  # `block_order`: the blocks' layout
                message.pop(key, None)
        elif isinstance(choice, dict) and "text" in choice:
            choice["text"] = WITHHELD
