"""guard: PII and secrets in the request (off | log | redact | block), prompt-injection heuristics on user and
tool content (off | log | block), optional restoring of redacted values in the answer, PII in answers
(off | log | redact, streams included), and the redacted prompt for the ledger when the policy logs prompts.

The policy is the caller's (default → org → team → tags → key, strictest wins; resolved by `auth`). What was
found is recorded as counts by type (`ledger.guard`), never the values. Every string that leaves for an
upstream is read (`guard.texts`). The work is capped per request (`guard.max_scan_chars`, `max_spans`,
`max_phone_checks`) and requests with more than `guard.inline_scan_chars` characters of text are scanned on
one worker thread, so a large prompt never holds the event loop (other requests, `/healthz`). The step is
always in the path: policies come from keys and rules that change while the gateway runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from margin.errors import Overloaded
from margin.guard import InjectionDetector, PiiScanner, Redaction, restore
from margin.guard.inspection import GuardPolicy, Inspector, RequestFindings, scan_cost
from margin.guard.limits import ScanLimits
from margin.guard.stream import StreamGuard
from margin.guard.texts import answer_text, request_texts, rewrite_answer
from margin.parsing import parse_request
from margin.pipeline.values import Next, Reply, Request
from margin.protocol import ApiRequest

T = TypeVar("T")


class Guard:
    def __init__(self, scanner: PiiScanner, detector: InjectionDetector, limits: ScanLimits | None = None) -> None:
        self.inspector = Inspector(scanner, detector, limits or ScanLimits())
        self.limits = self.inspector.limits
        self._pool: ThreadPoolExecutor | None = None
        self._queued = 0  # requests' scans waiting for or running on the worker thread

    async def _run(self, cost: int, work: Callable[[], T], *, refusable: bool = False) -> T:
        """`work()` inline when it costs little (`scan_cost`: well under a millisecond), else on the guard's
        worker thread (one: large scans queue behind each other instead of taking every core). `refusable`
        (a request's own scan, before its backend call): refused with 503 when `max_queued` scans wait
        already, so the queue, and the wait of every large prompt behind it, stays bounded. An answer's scan
        is never refused (its backend already worked)."""
        if cost <= self.limits.inline_chars:
            return work()
        if refusable and self._queued >= self.limits.max_queued:
            raise Overloaded(
                f"the guard is scanning {self._queued} large requests; retry shortly",
                code="guard_busy",
                headers={"retry-after": "1"},
            )
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="margin-guard")
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work)
        finally:
            self._queued -= 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def __call__(self, request: Request, next: Next) -> Reply:
        policy = GuardPolicy.of(request.policy)
        record = request.record
        state = None
        if policy.reads_request:
            texts = request_texts(request.raw)
            cost = scan_cost(texts, self.limits.inline_chars)
            found, body = await self._run(cost, lambda: self._inspect(request, texts, policy), refusable=True)
            record.found(found.record)
            if found.error is not None:
                raise found.error
            if found.raw is not None and body is not None:
                request = request._replace(raw=found.raw, body=body)
            record.prompt_log = found.prompt_log
            state = found.state
        restores = policy.restore_pii and policy.pii == "redact" and state is not None and bool(state.placeholders)
        if not request.is_stream:
            reply = await next(request)
            await self._answer(reply, policy, state if restores else None, record.found)
            return reply
        rewrite = self.inspector.stream_guard(policy, state if restores else None)
        reply = await next(request._replace(rewrite=rewrite))
        if isinstance(rewrite, StreamGuard):
            record.found(rewrite.record())
        generated = reply.generated or reply.delivered  # what the stream generated: reasoning and tool calls too
        if policy.pii_output == "log" and generated is not None and (text := await generated()):
            cost = scan_cost([("", text)], self.limits.inline_chars)
            record.found(await self._run(cost, lambda: self.inspector.delivered_pii(text)))
        return reply

    def _inspect(
        self, request: Request, texts: list[tuple[str, str]], policy: GuardPolicy
    ) -> tuple[RequestFindings, ApiRequest | None]:
        """The request-side work (scan, redact, re-validate the rewritten request), in one piece so it can
        leave the event loop."""
        found = self.inspector.request(request.raw, texts, policy)
        if found.raw is None or found.error is not None:
            return found, None
        return found, parse_request(request.endpoint, found.raw)

    async def _answer(
        self, reply: Reply, policy: GuardPolicy, state: Redaction | None, note: Callable[[dict[str, Any]], None]
    ) -> None:
        """A whole answer: restore the caller's redacted values, then find (and redact) PII in it."""
        completion = reply.completion
        if completion is None or (policy.pii_output == "off" and state is None):
            return
        payload = completion.payload
        cost = scan_cost([("", answer_text(payload))], self.limits.inline_chars)

        def work() -> tuple[bool, dict[str, Any]]:
            changed = state is not None and rewrite_answer(payload, lambda text: restore(text, state))
            if policy.pii_output == "off":
                return changed, {}
            pii_changed, found = self.inspector.answer_pii(payload, policy)
            return changed or pii_changed, found

        changed, found = await self._run(cost, work)
        note(found)
        if changed:
            completion.raw = None  # re-serialize the rewritten payload
