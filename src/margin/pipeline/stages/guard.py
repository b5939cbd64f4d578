"""guard: PII and secrets in the request (off | log | redact | block), prompt-injection heuristics on user and
tool content (off | log | block), optional restoring of redacted values in the answer, PII in answers
(off | log | redact, streams included), and the redacted prompt for the ledger when the policy logs prompts.

The policy is the caller's, resolved by `admit` (default → org → team → tags → key, strictest wins). What
was found is recorded as counts by type (`ledger.guard`), never the values. Every string that leaves for an
upstream is read (`guard.texts`). The work is capped per request (`guard.max_scan_chars`, `max_spans`,
`max_phone_checks`) and requests with more than `guard.inline_scan_chars` characters of text are scanned on
one worker thread, so a large prompt never holds the event loop (other requests, `/healthz`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from margin.guard import InjectionDetector, PiiScanner, restore
from margin.guard.inspection import GuardPolicy, Inspector, RequestFindings, scan_cost
from margin.guard.limits import ScanLimits
from margin.guard.stream import StreamGuard
from margin.guard.texts import answer_text, request_texts, rewrite_answer
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext
from margin.protocol import ApiRequest, parse_request

T = TypeVar("T")


class GuardStage(BaseStage):
    name = "guard"

    def __init__(self, scanner: PiiScanner, detector: InjectionDetector, limits: ScanLimits | None = None) -> None:
        self.inspector = Inspector(scanner, detector, limits or ScanLimits())
        self.limits = self.inspector.limits
        self._pool: ThreadPoolExecutor | None = None

    async def _run(self, cost: int, work: Callable[[], T]) -> T:
        """`work()` inline when it costs little (`scan_cost`: well under a millisecond), else on the guard's
        worker thread (one: large scans queue behind each other instead of taking every core)."""
        if cost <= self.limits.inline_chars:
            return work()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="margin-guard")
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def on_request(self, ctx: RequestContext) -> None:
        policy = GuardPolicy.of(ctx.policy)
        state = None
        if policy.reads_request:
            texts = request_texts(ctx.raw)
            cost = scan_cost(texts, self.limits.inline_chars)
            found, request = await self._run(cost, lambda: self._inspect(ctx, texts, policy))
            if found.record:
                ctx.guard = {**(ctx.guard or {}), **found.record}
            if found.error is not None:
                raise found.error
            if found.raw is not None and request is not None:
                ctx.raw, ctx.request = found.raw, request
            ctx.prompt_log = found.prompt_log
            state = found.state
        ctx.guard_state = state
        restores = policy.restore_pii and policy.pii == "redact" and state is not None and bool(state.placeholders)
        if ctx.is_stream:
            ctx.stream_rewrite = self.inspector.stream_guard(policy, state if restores else None)

    def _inspect(
        self, ctx: RequestContext, texts: list[tuple[str, str]], policy: GuardPolicy
    ) -> tuple[RequestFindings, ApiRequest | None]:
        """The request-side work (scan, redact, re-validate the rewritten request), in one piece so it can
        leave the event loop; the context is changed by the caller, on the loop."""
        found = self.inspector.request(ctx.raw, texts, policy)
        if found.raw is None or found.error is not None:
            return found, None
        return found, parse_request(ctx.endpoint, found.raw)

    async def on_response(self, ctx: RequestContext) -> None:
        policy = GuardPolicy.of(ctx.policy)
        if ctx.stream is not None:
            if isinstance(ctx.stream_rewrite, StreamGuard):
                self._record(ctx, ctx.stream_rewrite.record())
            if policy.pii_output == "log" and ctx.delivered_text:
                text = "".join(ctx.delivered_text)
                cost = scan_cost([("", text)], self.limits.inline_chars)
                self._record(ctx, await self._run(cost, lambda: self.inspector.delivered_pii(text)))
            return
        completion = ctx.completion
        restores = policy.restore_pii and policy.pii == "redact" and ctx.guard_state is not None
        if completion is None or (policy.pii_output == "off" and not restores):
            return
        cost = scan_cost([("", answer_text(completion.payload))], self.limits.inline_chars)
        changed, record = await self._run(cost, lambda: self._answer(ctx, completion.payload, policy))
        self._record(ctx, record)
        if changed:
            completion.raw = None  # re-serialize the rewritten payload

    def _answer(self, ctx: RequestContext, payload: dict[str, Any], policy: GuardPolicy) -> tuple[bool, dict[str, Any]]:
        changed = False
        state = ctx.guard_state
        if policy.restore_pii and policy.pii == "redact" and state is not None:
            changed = rewrite_answer(payload, lambda text: restore(text, state))
        if policy.pii_output == "off":
            return changed, {}
        pii_changed, record = self.inspector.answer_pii(payload, policy)
        return changed or pii_changed, record

    @staticmethod
    def _record(ctx: RequestContext, record: dict[str, Any]) -> None:
        if record:
            ctx.guard = {**(ctx.guard or {}), **record}


def build(services: Any) -> GuardStage:
    config = services.settings.guard
    limits = ScanLimits(config.max_scan_chars, config.max_spans, config.max_phone_checks, config.inline_scan_chars)
    return GuardStage(PiiScanner(ner=config.ner), InjectionDetector(), limits)


STAGE = StageSpec("guard", 300, build)
