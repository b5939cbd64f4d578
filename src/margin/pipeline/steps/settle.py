"""settle, the outermost step: every request's ledger row goes to the outbox, and its budget reservation is
settled to the same cost, whatever happened inside (an answer, a rejection, a delivered or cut stream, a
client that left, a bug). Every authenticated request gets exactly one row (kind `request` or
`cache_hit`). The row is appended before the answer's last byte leaves (the flow writes that after this
step returned)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from margin.economics.money import to_nanousd
from margin.errors import InternalError, MarginError, Overloaded
from margin.governance.service import Governance
from margin.guard.pseudonym import UserPseudonyms
from margin.pipeline.values import ClientGone, Next, Record, Reply, Request
from margin.types import TraceContext

log = logging.getLogger("margin.pipeline")

LEDGER_BACKLOG = "ledger_backlog"  # the error code of requests refused because the ledger is behind


class RowSink(Protocol):
    """The ledger's outbox, as the request path sees it: `append` is synchronous and never waits on a
    database; `full` is the back-pressure flag the admit step reads."""

    def append(self, row: dict[str, Any]) -> None: ...

    @property
    def full(self) -> bool: ...


class Telemetry(Protocol):
    """Metrics and traces: called once per request with its finished row and the caller's trace context
    (its `traceparent`/`tracestate` headers, length-checked only), after the row is in the outbox (lossy;
    never on the ledger's path)."""

    def observe(self, row: dict[str, Any], trace: TraceContext | None = None) -> None: ...


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _nanousd(record: Record) -> int | None:
    """0 when no backend was called; NULL (never 0) when a backend was called at an unknown price."""
    if record.charge is None:
        return 0
    return None if record.charge.cost_usd is None else to_nanousd(record.charge.cost_usd)


def _storable(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL: a logged prompt keeps everything else."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def ledger_row(record: Record, config_hash: str, pseudonym: UserPseudonyms) -> dict[str, Any]:
    principal, target, charge, usage, hit = (
        record.principal,
        record.target,
        record.charge,
        record.usage,
        record.cache_hit,
    )
    return {
        "request_id": record.request_id,
        "kind": "cache_hit" if hit else "request",
        "created_at": record.started_at,
        "key_id": principal.key_id if principal else None,
        "team": principal.team if principal else None,
        "org": principal.org if principal else None,
        "user": pseudonym(record.user),  # never the raw value
        "tags": dict(record.tags),
        "endpoint": str(record.endpoint),
        "model": target.public if target else None,
        "requested_model": record.requested_model,
        "backend": target.backend_name if target else None,
        "region": target.region if target else None,
        "jurisdiction": target.jurisdiction if target else None,
        "guard": record.guard,
        "prompt_text": _storable(record.prompt_log),
        "status": record.status,
        "http_status": record.http_status,
        "error_code": record.error.code if record.error else record.fault_code,
        "stream": record.stream,
        "input_tokens": usage.input_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0,
        "cached_tokens": usage.cached_tokens if usage else 0,
        "usage_source": usage.source if usage else None,
        "ttft_ms": _ms(record.ttft_s),
        "e2e_ms": _ms(record.e2e_s) or 0.0,
        "overhead_ms": round(record.overhead_ms(), 3),
        "backend_ms": _ms(record.backend_wait_s),
        "queue_ms": _ms(record.queue_s),
        "cost_nanousd": _nanousd(record),
        "cost_status": charge.cost_status if charge else "no_charge",
        "cost_method": charge.cost_method if charge else None,
        "price_version": charge.price_version if charge else None,
        "energy_j": charge.energy_j if charge else None,
        "energy_method": charge.energy_method if charge else None,
        "pue": charge.pue if charge else None,
        "co2e_g": charge.co2e_g if charge else None,
        "grid_g_per_kwh": charge.grid_g_per_kwh if charge else None,
        "grid_source": charge.grid_source if charge else None,
        "config_hash": config_hash,
        "cache": hit.kind if hit else None,
        "saved_nanousd": hit.saved_nanousd if hit else None,
        "router_score": record.router_score,
        "counterfactual_nanousd": record.counterfactual_nanousd,
        "busy_ms": _ms(charge.busy_s) if charge else None,
        "service_tier": record.service_tier,  # set when a backend was called and metered: never on a cache hit
        **_levers(record),
    }


def _levers(record: Record) -> dict[str, Any]:
    """Batch lines (id, discount) and lowest-carbon/lowest-cost routes (default and its counterfactual)."""
    discount = record.charge.discount_usd if record.charge else None
    preference = record.preference
    return {
        "batch_id": record.batch.batch_id if record.batch else None,
        "discount_nanousd": None if discount is None else to_nanousd(discount),
        "route_pref": preference.objective if preference else None,
        "route_default": preference.default.public if preference else None,
        "default_cost_nanousd": record.default_cost_nanousd,
        "default_co2e_g": record.default_co2e_g,
    }


def shutting_down() -> Overloaded:
    """What a request the server's graceful period cut is answered (and its row records)."""
    return Overloaded(
        "the gateway is shutting down and its graceful period ended before this request finished; retry it",
        code="server_shutting_down",
        headers={"retry-after": "1"},
    )


class Settle:
    def __init__(
        self,
        outbox: RowSink,
        config_hash: str,
        governance: Governance | None,
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        pseudonym: UserPseudonyms | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.outbox = outbox
        self.config_hash = config_hash
        self.governance = governance
        self.spawn = spawn
        self.pseudonym = pseudonym or UserPseudonyms()
        self.telemetry = telemetry
        self.refused = 0  # requests refused while the outbox was full (they did nothing and get no row)

    async def __call__(self, request: Request, next: Next) -> Reply:
        record = request.record
        try:
            return await next(request)
        except ClientGone as gone:
            record.status, record.http_status = "client_closed", 499
            if gone.stalled:
                record.error = MarginError(str(gone), code="stream_write_timeout")
            return Reply(streamed=True)
        except asyncio.CancelledError:  # the server stopped it (shutdown, a batch worker's grace ran out)
            if request.client.stopping:  # the graceful period ended: the client is answered 503 (flow), so is the row
                stopped = shutting_down()
                record.fail(stopped, request.client.status_of(stopped), "cancelled")
            else:
                cancelled = MarginError("the request was cancelled inside the gateway", code="cancelled")
                record.fail(cancelled, 499, "cancelled")
            raise
        except MarginError as error:
            record.fail(error, request.client.status_of(error))
            raise
        except Exception as exc:
            log.exception("request %s failed inside margin", request.id)
            internal = InternalError(f"internal error in the gateway (request {request.id})")
            record.fail(internal, request.client.status_of(internal))
            raise internal from exc
        finally:
            record.e2e_s = time.perf_counter() - record.started
            await self._write(request, record)

    async def _write(self, request: Request, record: Record) -> None:
        if record.error is not None and record.error.code == LEDGER_BACKLOG:  # refused before any work: no row,
            self.refused += 1  # so a ledger that is down cannot grow the outbox without bound
            return
        row = ledger_row(record, self.config_hash, self.pseudonym)
        try:
            self.outbox.append(row)  # raises when it cannot: the request is refused (503), not acknowledged
        finally:  # the reservation is settled to what the request cost either way (never left to the reaper)
            await self._settle(record, row)
        if self.telemetry is not None:
            try:
                self.telemetry.observe(row, TraceContext.of(request.headers))
            except Exception:  # telemetry is lossy: it never fails a request
                log.exception("telemetry failed for request %s", request.id)

    async def _settle(self, record: Record, row: dict[str, Any]) -> None:
        admission = record.admission
        if self.governance is not None and admission is not None:
            # a cache hit used no model tokens: like the ledger reconciliation (kind `request` only), count none
            tokens = (0, 0) if record.cache_hit else (row["input_tokens"], row["output_tokens"])
            target, caller = record.target, admission.subject
            served = caller.serving(target.public, target.backend_name) if target and caller else None
            settling = self.governance.settle(admission, row["cost_nanousd"], tokens[0], tokens[1], served)
            if self.governance.store.inline:  # in-process counters: done where it stands, no task to start
                await settling
            else:  # the answer does not wait for a Redis round trip: the reservation holds until this lands
                self.spawn(settling)
