"""The request path, top to bottom.

    settle   the outermost step: whatever happens inside, its `finally` writes the ledger row to the outbox
             and settles the budget reservation (streams too: the call step returns once the stream is
             delivered, the client left, a write timed out or the upstream broke)
    auth     tags (header + the key's own), the caller as the rules see it, its policy
    route    where the request may go, decided once: candidates in order (flags, residency, the learned
             router), and the worst case the budgets reserve
    admit    back-pressure, the per-key stream cap, rate limits and the budget reservation
    guard    PII and secrets in and out, prompt injection (as the caller's policy says)
    cache    exact / semantic answers; stores what the call produced                          (when enabled)
    call     the terminal: walks the decision's candidates (breakers, fallbacks), delivers a stream,
             and meters the answer: usage → cost, energy, carbon, computed once

The list is composed once from the config by `compose` below (`margin.services` calls it with the services
it built); a step the config does not use is not in it (the cache without `cache.enabled`; admit and guard
always run, since keys, rules and policies change while the gateway runs). Each step is a small class with
one method, `async def __call__(self, request, next) -> Reply`: its request side before
`await next(request)`, its response side after, in one frame.
The flow itself writes the answer's last bytes after the steps returned, so the row is in the outbox before
the client has the whole answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import orjson

from margin.backend_config import HttpBackendConfig
from margin.cache.exact import CacheStore
from margin.cache.layer import SemanticLayer
from margin.config import Settings
from margin.economics.meter import Meter
from margin.errors import MarginError
from margin.governance.service import Governance
from margin.guard import InjectionDetector, PiiScanner
from margin.guard.limits import ScanLimits
from margin.pipeline.steps.admit import Admit
from margin.pipeline.steps.auth import Auth
from margin.pipeline.steps.cache import Cache
from margin.pipeline.steps.call import BackendCall
from margin.pipeline.steps.guard import Guard
from margin.pipeline.steps.route import Route
from margin.pipeline.steps.settle import RowSink, Settle, shutting_down
from margin.pipeline.stream import DONE, closing_comment, response_headers
from margin.pipeline.values import ClientGone, Next, Request, Step
from margin.routing.breaker import Breakers
from margin.routing.policy import RoutePolicy
from margin.types import Target


class Parts(NamedTuple):
    """What the steps are built from (the services, built once)."""

    targets: Mapping[str, Target]
    governance: Governance
    meter: Meter
    breakers: Breakers
    route_policy: RoutePolicy
    outbox: RowSink


def compose(
    settings: Settings, settle: Settle, parts: Parts, cache: CacheStore, semantic: SemanticLayer | None
) -> Flow:
    """The request path for this config, outermost step first."""
    guard = settings.guard
    limits = ScanLimits(
        guard.max_scan_chars, guard.max_spans, guard.max_phone_checks, guard.inline_scan_chars, guard.max_queued_scans
    )
    steps: list[Step] = [
        settle,
        Auth(settings.tags.header_keys, parts.governance, settle.pseudonym),
        Route(parts.targets, settings.routes, parts.governance, parts.meter, parts.route_policy),
        Admit(parts.governance, parts.outbox),
        Guard(PiiScanner(ner=guard.ner), InjectionDetector(), limits),
    ]
    if settings.cache.enabled:
        backends = settings.backends.items()
        time_limits = {name: b.timeout_s for name, b in backends if isinstance(b, HttpBackendConfig)}
        steps.append(Cache(settings.cache, cache, semantic, time_limits, parts.governance))
    return Flow(steps, BackendCall(parts.meter, parts.breakers, settings.admission, parts.governance))


def chain(steps: Sequence[Step], terminal: Next) -> Next:
    """`steps[0](request, next=steps[1](…, next=terminal))`, bound once."""
    handler = terminal
    for step in reversed(steps):
        handler = functools.partial(step, next=handler)
    return handler


class Flow:
    def __init__(self, steps: Sequence[Step], terminal: Next) -> None:
        self.steps = list(steps)
        self._run = chain(self.steps, terminal)

    @property
    def names(self) -> list[str]:
        return [type(step).__name__ for step in self.steps]

    async def __call__(self, request: Request) -> None:
        """One request's whole life: the steps (the row is written when they return), then the answer's
        last bytes: the whole JSON answer, the error, or a stream's closing comment and `[DONE]`."""
        record, client = request.record, request.client
        try:
            reply = await self._run(request)
        except MarginError as error:
            if not record.stream or record.status != "client_closed":
                await client.refuse(error, response_headers(record))
            return
        except asyncio.CancelledError:  # its row is written (`cancelled`): the client hears why
            # the one cancellation a client is told of: the server's, once `server.shutdown_grace_s` (uvicorn's
            # `timeout_graceful_shutdown`) has passed after SIGTERM, recognised by margin's own mark (`stopping`),
            # not uvicorn's message (a batch worker's own, at its grace, is not the server's; a client that left is
            # found by a write)
            if client.stopping and record.status != "client_closed":
                with contextlib.suppress(ClientGone, OSError):  # a stream: an error event, then the end
                    await client.refuse(shutting_down(), response_headers(record))
            raise
        if reply.completion is not None:
            completion = reply.completion
            body = completion.raw if completion.raw is not None else orjson.dumps(completion.payload)
            await client.answer(body, response_headers(record))
        elif record.status != "client_closed":
            await client.end_stream(closing_comment(record) + DONE)
