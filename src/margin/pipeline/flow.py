"""The request path, top to bottom.

    settle   the outermost step: whatever happens inside, its `finally` writes the ledger row to the outbox
             and settles the budget reservation (streams too: the call step returns once the stream is
             delivered, the client left, a write timed out or the upstream broke)
    auth     tags (header + the key's own), the caller as the rules see it, its policy
    route    where the request may go, decided once: candidates in order (flags, residency, the learned
             router), and the worst case the budgets reserve
    admit    back-pressure, the per-key stream cap, rate limits and the budget reservation   (with rules)
    guard    PII and secrets in and out, prompt injection                                     (with a policy)
    cache    exact / semantic answers; stores what the call produced                          (when enabled)
    call     the terminal: walks the decision's candidates (breakers, fallbacks), delivers a stream,
             and meters the answer: usage → cost, energy, carbon, computed once

The list is composed once from the config by `compose` (`margin.services` calls it); a step the config
does not use is not in it. Each step is a small class with one method, `async def __call__(self, request,
next) -> Reply`: its request side before `await next(request)`, its response side after, in one frame.
The flow itself writes the answer's last bytes after the steps returned, so the row is in the outbox before
the client has the whole answer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson

from margin.errors import MarginError
from margin.pipeline.stream import DONE, closing_comment, response_headers
from margin.pipeline.values import Next, Request, Step


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

    def step(self, kind: type[Any]) -> Any:
        """The step of this class in the list, or None."""
        return next((step for step in self.steps if isinstance(step, kind)), None)

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
        if reply.completion is not None:
            completion = reply.completion
            body = completion.raw if completion.raw is not None else orjson.dumps(completion.payload)
            await client.answer(body, response_headers(record))
        elif record.status != "client_closed":
            await client.end_stream(closing_comment(record) + DONE)
