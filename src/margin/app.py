"""build_app(settings) -> ASGI app. Services are built once in the lifespan; no globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from margin import tasks
from margin.api import (
    admin,
    count_tokens,
    edge,
    feedback,
    inference,
    messages,
    meta,
    observability,
    openapi,
    responses,
    stored,
)
from margin.api import batches as batches_api
from margin.api.errors import INTERNAL, Stamped, anthropic_error_body, error_body, error_response
from margin.api.heads import PROTOCOL_REFUSED
from margin.backends.registry import BackendRegistry
from margin.batches.runner import BatchRunner
from margin.config import Settings
from margin.dashboard import views as dashboard
from margin.economics.curves import keep_fresh
from margin.errors import InternalError, MarginError, MethodNotAllowed, NotFound
from margin.ledger import audit
from margin.ledger import stored as stored_db
from margin.ledger.db import UNREACHABLE
from margin.ledger.ids import request_id as new_request_id
from margin.logs import failure, printable
from margin.services import Services

log = logging.getLogger("margin")
AUDIT_PRUNE_S = 86_400.0  # audit.retention_days: how often a running gateway prunes
RESPONSES_PRUNE_S = 3_600.0  # responses.retention_days (an expired response is a 404 before it is pruned)


def _shape(path: str) -> Callable[[MarginError], dict[str, Any]]:
    """The error JSON of a path: Anthropic's under `/v1/messages` (its SDKs read that shape), else OpenAI's."""
    return anthropic_error_body if path.startswith("/v1/messages") else error_body


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 405:  # with starlette's `Allow` (the route's methods), as RFC 9110 asks
        refused = error_response(
            MethodNotAllowed(f"method {request.method} is not allowed on {path}"), body_of=_shape(path)
        )
        refused.headers.update(exc.headers or {})
        return refused
    if exc.status_code == 404:
        missing = NotFound(f"no route {request.method} {path}", code="unknown_url")
        return error_response(missing, body_of=_shape(path))
    return error_response(MarginError(str(exc.detail)), status=exc.status_code)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left before its body arrived: an empty answer nobody reads, and no traceback in the log (a
    client that does this on purpose must not be able to fill the log)."""
    return Response(status_code=400)


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A crash: the usual 500, logged with the request id its answer carries (`Gateway.stamped`)."""
    request_id = request.scope.get("state", {}).get("request_id")
    log.exception("unhandled error on %s (request %s)", printable(request.url.path), request_id)
    return error_response(InternalError(INTERNAL))


async def _prune(services: Services, every_s: float, what: str, prune: Callable[..., int], *args: Any) -> None:
    """`audit.retention_days`, `responses.retention_days`: the audit log and stored responses are pruned at start
    (`Services.start`), then every `every_s` (`prune(engine, *args)`, on the read threads)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await services.read(prune, services.sync_engine(), *args)
        except Exception:
            log.exception("pruning %s failed; it is tried again in %.0f s", what, every_s)


async def _reconcile_budgets(services: Services) -> None:
    """At start, off the request path: the ledger's rows still in the outbox ingested (a restart after a crash
    replays them), then every budget counter `/admin/budgets` and the gauges list reconciled from the ledger, so
    a scrape right after a restart shows what was spent, not 0 (`Governance.reconcile`)."""
    try:
        await services.outbox.flush()
        await admin.budget_states(services)
    except (MarginError, *UNREACHABLE) as exc:  # the ledger or the store is down: the first use tries again
        log.warning("reconciling the budget counters at start failed: %s", failure(exc))
    except Exception:
        log.warning("reconciling the budget counters at start failed", exc_info=True)


def _watch_sighup(services: Services) -> None:
    """SIGHUP re-reads the config file's budgets, limits, flags and policies (no restart, nothing dropped)."""
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        signalled = audit.Origin("signal:SIGHUP", "reload")
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: services.spawn(services.audited_reload(signalled))
        )


Handler = Callable[[Request], Awaitable[Response | ASGIApp]]


class Gateway(Starlette):
    """Starlette, except that the inference POSTs go straight to their handlers, past the router and the two
    error middlewares (a few tens of µs a request, on the hottest path). Errors end the same way: a handler's
    unexpected exception becomes the same 500 answer and is re-raised for the server to log.
    Every HTTP request first passes the edge checks (`margin.api.edge`: open mode's loopback Host and
    same-origin rule, JSON bodies only), from its headers alone.
    The owner of what every answer carries: an answer of anything but an inference route (the edge checks'
    refusals, starlette's own 404 and 405, the admin API, the dashboard, a crash's 500) goes out through
    `Stamped`, which adds the request id, the cost (0) and margin's time where the answer has none; the inference
    routes set their own (`margin.api.inference.arrive`, the request path). And of what is counted: a refusal
    with no ledger row counts itself through `refused` when it is sent (`margin.api.errors.Refusal`), as do the
    protocol's own answers (431, 408, 503: `margin.api.heads`), which find `refused` in the lifespan state."""

    def __init__(self, *, fast: dict[str, Handler], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast = fast

    def refused(self, code: str | None) -> None:
        """One refusal with no ledger row: `margin_rejections_total{reason=code}` (one tally increment; nothing
        before the services exist)."""
        services = getattr(self.state, "services", None)
        if services is not None:
            services.telemetry.refused(code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and isinstance(scope.get("state"), dict):
                scope["state"][PROTOCOL_REFUSED] = self.refused  # uvicorn hands this dict to the protocol
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        services = getattr(self.state, "services", None)  # none before the lifespan: fail closed
        refused = edge.refusal(scope, services is None or services.keys.open_mode)
        handler = None
        if refused is None and scope["method"] == "POST" and not scope.get("root_path"):
            handler = self.fast.get(scope["path"])
        if handler is None:
            stamped = self.stamped(scope, send, started)
            if refused is None:
                await super().__call__(scope, receive, stamped)
                return
            scope["app"] = self
            await error_response(refused, body_of=_shape(scope["path"]))(scope, receive, stamped)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except ClientDisconnect:  # left before its body arrived (or its body deadline passed): nobody to answer
            return
        except Exception as exc:
            stamped = self.stamped(scope, send, started)  # before the log line, which names its request id
            await (await _unexpected(request, exc))(scope, receive, stamped)
            raise
        await response(scope, receive, send)

    @staticmethod
    def stamped(scope: Scope, send: Send, started: float) -> Stamped:
        """`send` through `Stamped`, with a new request id, also in the request's state (what the log names)."""
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        return Stamped(send, request_id, started)


def build_app(
    settings: Settings,
    registry: BackendRegistry | None = None,
    config_path: Path | None = None,
    config_hash: str | None = None,
) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = Services(settings, registry, config_path, config_hash)
        app.state.services = services
        runner: BatchRunner | None = None
        curves: asyncio.Task[None] | None = None
        pruner: asyncio.Task[None] | None = None
        expiry = asyncio.create_task(
            _prune(services, RESPONSES_PRUNE_S, "stored responses", stored_db.prune), name="responses-retention"
        )
        try:
            await services.start()
            services.spawn(_reconcile_budgets(services))
            curves = asyncio.create_task(keep_fresh(services.meter.curves), name="grid-curves")
            if (days := settings.audit.retention_days) is not None:
                pruner = asyncio.create_task(_prune(services, AUDIT_PRUNE_S, "the audit log", audit.prune, days))
            if config_path is not None:
                _watch_sighup(services)
            if settings.batches.enabled:  # batch lines are in-process calls of this app: see margin.batches
                runner = app.state.batch_runner = BatchRunner(app, services)
                runner.start()
            yield
        finally:
            if curves is not None:
                curves.cancel()
            await tasks.stop(pruner)
            await tasks.stop(expiry)
            if runner is not None:
                await runner.close()
            await services.close()

    fast: dict[str, Handler] = {
        "/v1/chat/completions": inference.chat_completions,
        "/v1/completions": inference.completions,
        "/v1/embeddings": inference.embeddings,
        "/v1/responses": responses.responses,
        "/v1/responses/input_tokens": responses.input_tokens,
        "/v1/responses/compact": responses.compact,
        "/v1/messages": messages.messages,
        "/v1/messages/count_tokens": count_tokens.count_tokens,
    }
    routes = [
        *(Route(path, handler, methods=["POST"]) for path, handler in fast.items()),
        Route("/v1/models", meta.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", meta.get_model, methods=["GET"]),
        Route("/healthz", meta.healthz, methods=["GET"]),
        Route("/readyz", meta.readyz, methods=["GET"]),
        Route("/openapi.json", openapi.endpoint(), methods=["GET"]),
        *admin.routes(),
        *observability.routes(),
        *dashboard.routes(),
        *feedback.routes(),
        *stored.routes(),
        *batches_api.routes(),
    ]
    return Gateway(
        fast=fast,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, ClientDisconnect: _client_gone, Exception: _unexpected},
    )
