"""guard: PII and secrets in the request (off | log | redact | block), prompt-injection heuristics on user and
tool content (off | log | block), optional restoring of redacted values in the answer, PII in answers
(off | log | redact), and the redacted prompt for the ledger when the policy logs prompts.

The policy is the caller's, resolved by `admit` (default → org → team → tags → key, strictest wins). What
was found is recorded as counts by type (`ledger.guard`), never the values."""

from __future__ import annotations

from typing import Any

from margin.errors import InvalidRequest
from margin.guard import InjectionDetector, PiiScanner, Redaction, StreamRestorer, redact, restore
from margin.guard.texts import UNTRUSTED_ROLES, answer_text, request_texts, rewrite_answer, rewrite_request
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext
from margin.protocol import parse_request

PROMPT_LOG_MAX_CHARS = 20_000


class StreamRewriter:
    """Restores placeholders across streamed chunks; the held-back tail goes out with the finishing chunk."""

    def __init__(self, state: Redaction) -> None:
        self.restorer = StreamRestorer(state)

    def __call__(self, payload: dict[str, Any]) -> bool:
        choices = payload.get("choices") or []
        finishing = any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
        changed = rewrite_answer(payload, self.restorer.feed)
        if finishing:
            rest = self.restorer.flush()
            if rest:
                holder = choices[0].get("delta") if isinstance(choices[0].get("delta"), dict) else choices[0]
                key = "content" if holder is not choices[0] else "text"
                holder[key] = (holder.get(key) or "") + rest
                changed = True
        return changed


class GuardStage(BaseStage):
    name = "guard"

    def __init__(self, scanner: PiiScanner, detector: InjectionDetector) -> None:
        self.scanner = scanner
        self.detector = detector

    async def on_request(self, ctx: RequestContext) -> None:
        policy = ctx.policy
        if policy is None:
            return
        pii, injection = policy.pii or "off", policy.injection or "off"
        if injection != "off":
            self._injection(ctx, injection == "block")
        state: Redaction | None = None
        if pii != "off" or policy.log_prompts:
            state = Redaction(self.scanner)
            redacted_raw = rewrite_request(ctx.raw, lambda text: redact(text, state))
            counts = state.counts()
            if counts:
                self._record(ctx, pii=counts, pii_action=pii)
            if pii == "block" and counts:
                found = ", ".join(f"{n} {entity}" for entity, n in counts.items())
                raise InvalidRequest(
                    f"the request contains sensitive data ({found}) and this key's policy blocks it",
                    code="pii_detected",
                )
            if pii == "redact" and counts:
                ctx.raw = redacted_raw
                ctx.request = parse_request(ctx.endpoint, redacted_raw)
                if policy.restore_pii:
                    ctx.stream_rewrite = StreamRewriter(state)
            if policy.log_prompts:
                text = "\n".join(text for _, text in request_texts(redacted_raw))
                ctx.prompt_log = text[:PROMPT_LOG_MAX_CHARS]
        ctx.guard_state = state

    def _injection(self, ctx: RequestContext, block: bool) -> None:
        texts = [text for role, text in request_texts(ctx.raw) if role in UNTRUSTED_ROLES]
        verdicts = [self.detector.assess(text) for text in texts]
        flagged = [v for v in verdicts if v.flagged]
        if not flagged:
            return
        rules = sorted({f.rule for v in flagged for f in v.findings})
        score = max(v.score for v in flagged)
        self._record(ctx, injection={"score": round(score, 3), "rules": rules, "action": "block" if block else "log"})
        if block:
            raise InvalidRequest(
                f"the request looks like a prompt injection ({', '.join(rules)}); this key's policy blocks it",
                code="prompt_injection_detected",
            )

    @staticmethod
    def _record(ctx: RequestContext, **found: Any) -> None:
        ctx.guard = {**(ctx.guard or {}), **found}

    async def on_response(self, ctx: RequestContext) -> None:
        policy, completion = ctx.policy, ctx.completion
        if policy is None or completion is None or ctx.stream is not None:
            return
        state = ctx.guard_state
        changed = False
        if policy.restore_pii and state is not None and (policy.pii or "off") == "redact":
            changed = rewrite_answer(completion.payload, lambda text: restore(text, state))
        output = policy.pii_output or "off"
        if output != "off":
            answer_state = Redaction(self.scanner)
            if output == "redact":
                changed = rewrite_answer(completion.payload, lambda text: redact(text, answer_state)) or changed
            else:
                redact(answer_text(completion.payload), answer_state)
            if answer_state.counts():
                self._record(ctx, pii_output=answer_state.counts(), pii_output_action=output)
        if changed:
            completion.raw = None  # re-serialize the rewritten payload


def build(services: Any) -> GuardStage:
    return GuardStage(PiiScanner(ner=services.settings.guard.ner), InjectionDetector())


STAGE = StageSpec("guard", 300, build)
