"""The batch worker: runs in the gateway's lifespan, takes the lease of active jobs (one worker per job across
processes and replicas), validates new ones, plans them, and runs their lines through the gateway itself,
as in-process calls of `POST /v1/...` made as the key that created the job (`margin.batches.inprocess`), so
budgets, guards, cache, routing, metering and the ledger apply to every line unchanged.

Durability: a line is marked `running` (attempt n, request id fixed by (job, line, n)) before its call, its
ledger row is flushed before the line is marked done, and a restart runs lines left running again as their
next attempt, under a new request id: the attempt cut by the crash may have been paid for, and its row (if
written) stays. The ledger keeps one row per attempt that reached it, the output file one entry per line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.types import ASGIApp

from margin import tasks
from margin.backends.retry import retry_after_s
from margin.batches import expiry, inprocess, progress, store
from margin.batches.jsonl import validate
from margin.batches.planning import Planner, line_tokens, options_for, turn, used_capacity
from margin.errors import SHOULD_RETRY, NotFound, RateLimited, UpstreamRateLimited
from margin.governance.rules import Subject, governed_tags
from margin.keys import principal_of
from margin.ledger.db import UNREACHABLE
from margin.ledger.models import batches
from margin.logs import failure
from margin.specs import Policy
from margin.types import ANONYMOUS, BatchLine, Principal

log = logging.getLogger("margin.batches")
SETTLE_EVERY = 60  # passes between two looks for jobs an older release ended (about a minute at poll_s 1)
MAX_RECORD_PAUSE_S = 30.0  # the longest wait between two tries of recording landed lines
# what passes with time (a locked SQLite, a database away, a dropped connection), unlike a constraint or data error
TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError, OSError)


def may_pass_later(status: int, headers: Mapping[str, str]) -> bool:
    """Whether a line's failed attempt is worth another: OpenAI's SDKs' own rule. An answer that says
    `x-should-retry: false` (margin's refusals that do not change with time: 503 `residency_unavailable` for a
    key whose jurisdictions exclude every backend of the model) is final; so is every 4xx but 408 (timeout),
    409 (conflict) and 429 (rate limits, budgets); 5xx (upstream faults, timeouts, a full queue, open
    circuits, `governance_unavailable`, `auth_unavailable`, margin's own faults) is tried again."""
    if headers.get(SHOULD_RETRY) == "false":
        return False
    return status in (408, 409, 429) or status >= 500


def utcnow() -> datetime:
    return datetime.now(UTC)


class BatchRunner:
    def __init__(self, app: ASGIApp, services: Any, clock: Callable[[], datetime] = utcnow) -> None:
        self.app = app
        self.services = services
        self.config = services.settings.batches
        self.clock = clock
        self.worker = f"{socket.gethostname()[:16]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.wake = asyncio.Event()
        self.planner = Planner(services.settings, services.meter)
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, _Job] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._unsettled = True  # ended jobs an older release left with their line rows (progress.settle_finished)
        self._passes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-worker")

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop dispatching; lines in flight get `grace_s` to finish (a line cut off runs again after restart,
        as its next attempt); then give the leases back."""
        self._stopping = True
        self.wake.set()
        for running in self._running.values():
            running.wake.set()
        await tasks.stop(self._task)
        jobs = [job for job in self._jobs.values() if not job.done()]
        if jobs:
            _, late = await asyncio.wait(jobs, timeout=grace_s)
            for job in late:
                job.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        try:
            await progress.release(self.services.engine, self.worker)
        except Exception:  # a lease not given back runs out after lease_s
            log.warning("batch worker: could not give its leases back", exc_info=True)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
            except UNREACHABLE as exc:  # the ledger down or restarting: expected, one line, no traceback
                log.warning("batch worker: a pass over the jobs failed (ledger unreachable): %s", failure(exc))
            except Exception:
                log.exception("batch worker: a pass over the jobs failed; retrying")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.config.poll_s)

    async def tick(self) -> None:
        """Renew or take leases; start a task for every job held and not yet running here; wake the others
        (a cancellation or a new job is seen at once); delete a page of expired files (margin.batches.expiry).
        Ended jobs whose line rows an older release left (progress.settle_finished) are settled a page a pass
        until none is left, then looked for again every SETTLE_EVERY passes (a replica not yet upgraded may still
        end jobs)."""
        for running in self._running.values():
            running.wake.set()
        held = await progress.claim(self.services.engine, self.worker, self.clock(), self.config.lease)
        for batch_id in held:
            job = self._jobs.get(batch_id)
            if job is None or job.done():
                self._jobs[batch_id] = asyncio.create_task(self.run_job(batch_id), name=f"batch {batch_id}")
        for batch_id in [b for b, job in self._jobs.items() if job.done()]:
            del self._jobs[batch_id]
        await expiry.sweep(self.services.engine, self.clock())  # a page of expired files, each pass
        self._passes += 1
        if self._unsettled or self._passes % SETTLE_EVERY == 0:  # an old replica may still end jobs: look again
            self._unsettled = await progress.settle_finished(self.services.engine) >= progress.SETTLE_PAGE

    async def run_job(self, batch_id: str) -> None:
        try:
            batch = await store.get_batch(self.services.engine, batch_id, None)
            if batch.status == "validating":
                await self._validate(batch)
            elif batch.status in ("in_progress", "cancelling"):  # a cancelling job's cut lines end cancelled
                await progress.reset_running(self.services.engine, batch_id, self.config.max_attempts, self.clock())
            job = self._running[batch_id] = _Job(self, batch_id)
            await job.run()
        except Exception:
            log.exception("batch %s: the worker failed; it resumes on the next pass", batch_id)
        finally:
            self._running.pop(batch_id, None)

    async def principal(self, batch: Any) -> Principal | None:
        """The key that created the job, as it is now (None once revoked), with the job's id as a bound tag.
        A job created in open mode runs as the anonymous caller only while the gateway is still open: once a
        key exists, an anonymous call is refused online (401), and so are that job's lines."""
        tags = {"batch_id": batch.id}
        if batch.key_id is None:
            return dataclasses.replace(ANONYMOUS, tags=tags) if await self.services.keys.open_now() else None
        record = await self.services.keys.lookup_id(batch.key_id)
        if record is None or record.revoked_at is not None or record.expired(datetime.now(UTC)):
            return None  # revoked or expired: its lines are refused (401) as they would be online
        principal = principal_of(record)
        return dataclasses.replace(principal, tags={**principal.tags, **tags})

    def policy(self, principal: Principal, tags: Mapping[str, str] | None) -> Policy:
        """The job's lines' policy, as the request path will see each line: the job's `x-margin-tags` (sent
        with every line) under the key's own tags, of which the rules see those bound to the key (a `name=*`
        tag the key fills from the header included: `margin.pipeline.steps.auth`)."""
        bound = principal.tags
        merged = {**(tags or {}), **{name: value for name, value in bound.items() if value != "*"}}
        governed = governed_tags(merged, bound, principal.key_id is not None)
        subject = Subject(principal.key_id, principal.team, principal.org, governed)
        policy: Policy = self.services.governance.rules.policy_for(subject, principal.policy)
        return policy

    def jurisdictions(self, principal: Principal, tags: Mapping[str, str] | None) -> list[str] | None:
        """Where the job's lines may run (its policy's jurisdictions)."""
        policy = self.policy(principal, tags)
        return None if policy.jurisdictions is None else list(policy.jurisdictions)

    def served_as(self, model: str) -> str | None:
        """The model a line's name is served as (an alias: its model; a route: the route), None if unknown."""
        target = self.services.targets.get(model)
        if target is not None:
            return str(target.public)
        return model if model in self.services.settings.routes else None

    async def _validate(self, batch: Any) -> None:
        engine, now = self.services.engine, self.clock()
        try:
            content = await store.input_content(engine, batch.input_file_id)
        except NotFound:  # deleted before validation (not expired: kept for it); a database failure is retried
            await progress.input_missing(engine, batch.id, now)
            return
        # up to batches.max_lines schema checks: off the event loop, which keeps serving live traffic
        lines, errors = await self.services.read(validate, content, batch.endpoint, self.served_as)
        plan = None
        principal = await self.principal(batch)
        if lines and principal is not None:
            plan = await self.plan(batch, lines[0].model, [line.body for line in lines], principal, now)
        await progress.save_validation(engine, batch.id, lines, errors, plan, now, self.config.max_stored_bytes_per_key)

    async def plan(
        self, batch: Any, model: str, bodies: list[bytes], principal: Principal, now: datetime
    ) -> dict[str, Any] | None:
        policy = self.policy(principal, batch.tags)
        settings, targets = self.services.settings, self.services.targets
        options = options_for(settings, targets, model, policy.jurisdictions, policy.allowed_models)
        if not options:
            return None  # a routed model of another kind, or nothing allowed: lines run (and fail) as sent
        work = await self.services.read(_work, bodies, self.config.assumed_output_tokens)  # parses every body
        async with self.services.engine.connect() as connection:
            others = await connection.execute(
                sa.select(batches.c.plan).where(batches.c.status.in_(store.ACTIVE), batches.c.id != batch.id)
            )
            used = used_capacity(row.plan for row in others)
        return self.planner.plan(options, work, now, store.utc(batch.expires_at) or now, used)


def _work(bodies: list[bytes], assumed_output_tokens: int) -> int:
    """The tokens a job's lines will take (up to 50,000 bodies parsed: on a read thread, off the event loop)."""
    return sum(line_tokens(body, assumed_output_tokens) for body in bodies)


class _Job:
    """One job's run in this worker: dispatch lines while its plan allows, up to `batches.concurrency`; record
    the lines that landed together (one ledger flush and one transaction for all of them)."""

    def __init__(self, runner: BatchRunner, batch_id: str) -> None:
        self.runner = runner
        self.engine = runner.services.engine
        self.batch_id = batch_id
        self.flying: dict[int, asyncio.Task[tuple[int, int, progress.Outcome]]] = {}
        self.landed: list[tuple[int, int, progress.Outcome]] = []
        self.sent: dict[str, int] = {}  # tokens dispatched per window model (splits an hour between windows)
        self.wake = asyncio.Event()  # a line landed, or the runner saw news (cancel, shutdown)
        self.paused_until: datetime | None = None  # margin's rate limiter refused a line: no dispatch before
        self.ramp: int | None = None  # after a refusal, lines in flight allowed: 1, one more per line answered

    async def run(self) -> None:
        runner = self.runner
        try:
            while True:
                await self._record()
                batch = await store.get_batch(self.engine, self.batch_id, None)
                if batch.status not in ("in_progress", "cancelling") or runner._stopping:
                    return
                if not progress.holds(batch, runner.worker, runner.clock()):
                    log.warning("batch %s: this worker lost its lease; it stops dispatching", self.batch_id)
                    return  # the lines in flight land and are recorded (once: guarded by their attempt)
                if await self._ending(batch):
                    return
                wait = await self._dispatch(batch)
                await self._wait(wait)
        except asyncio.CancelledError:  # the grace period is over: cut the lines in flight, do not wait for them
            for task in self.flying.values():
                task.cancel()
            raise
        finally:
            await self._land_all()

    async def _land_all(self) -> None:
        if self.flying:
            await asyncio.gather(*self.flying.values(), return_exceptions=True)
        await self._record()

    async def _record(self) -> None:
        """Lines that landed: their ledger rows reach the database first, then their outcomes, in one go."""
        pause = self.runner.config.poll_s
        while self.landed:
            landed, self.landed = self.landed, []
            try:
                await _durable(self.runner.services)
                await progress.finish_lines(self.engine, self.batch_id, landed, self.runner.clock())
            except TRANSIENT as exc:  # a locked or unreachable database: again (guarded by attempt: once)
                self.landed = landed + self.landed  # dropped, the job's next run would run (and pay) them again
                if self.runner._stopping:
                    raise
                log.warning(
                    "batch %s: recording %d lines failed (retried in %.1f s): %s",
                    self.batch_id,
                    len(landed),
                    pause,
                    failure(exc),
                )
                await asyncio.sleep(pause)
                pause = min(2 * pause, MAX_RECORD_PAUSE_S)  # a long outage: a line every 30 s, not every poll

    async def _ending(self, batch: Any) -> bool:
        """Cancelled, expired or done: close what is pending, let lines in flight land, write the files."""
        now = self.runner.clock()
        final = None
        if batch.status == "cancelling":
            final = "cancelled"
        elif now >= (store.utc(batch.expires_at) or now):
            final = "expired"
        if final is not None:
            await progress.close_pending(self.engine, batch.id, final, now)
        elif self.flying or await progress.open_lines(self.engine, batch.id):
            return False
        else:
            final = "failed" if batch.model is None else "completed"  # no line was valid (the model is a line's)
        await self._land_all()
        if await progress.open_lines(self.engine, batch.id):
            return False  # a line in flight went back to pending (retry): not over yet
        return await progress.finalize(self.engine, batch.id, final, self.runner.clock())  # False: not over yet

    async def _dispatch(self, batch: Any) -> datetime | None:
        runner, now = self.runner, self.runner.clock()
        plan = turn(batch.plan, batch.model or "", now)
        free = min(runner.config.concurrency, self.ramp or runner.config.concurrency) - len(self.flying)
        if not plan.models or free <= 0:
            return plan.wake
        if self.paused_until is not None and now < self.paused_until:
            return self.paused_until  # the limiter said when: asking for every pending line meanwhile is noise
        rows = await progress.pending_lines(self.engine, batch.id, now, free, set(self.flying))
        if not rows:
            return None
        principal = await runner.principal(batch)
        starts = [(r.line, r.attempts + 1) for r in rows]
        started = await progress.start_lines(self.engine, batch.id, starts, runner.worker, runner.clock())
        for row in rows:
            if row.line not in started:
                continue
            model = min(plan.models, key=lambda m: self.sent.get(m[0], 0) / m[1])[0]
            self.sent[model] = self.sent.get(model, 0) + line_tokens(row.body, runner.config.assumed_output_tokens)
            call = self._line(batch, row, model, principal, started[row.line], row.attempts + 1)
            task = asyncio.create_task(call)
            self.flying[row.line] = task
            task.add_done_callback(self._landed_callback(row.line))
        return None

    def _landed_callback(self, line: int) -> Callable[[asyncio.Task[tuple[int, int, progress.Outcome]]], None]:
        def landed(task: asyncio.Task[tuple[int, int, progress.Outcome]]) -> None:
            self.flying.pop(line, None)
            if not task.cancelled() and task.exception() is None:
                self.landed.append(task.result())
                self._pace(task.result()[2])
            self.wake.set()

        return landed

    def _pace(self, outcome: progress.Outcome) -> None:
        """After margin's rate limiter refused a line: no dispatch before its retry-after, then one line in
        flight, one more for each line it lets through (not `concurrency` lines at once, most refused again)."""
        if outcome.deferred and outcome.not_before is not None:
            self.paused_until = max(outcome.not_before, self.paused_until or outcome.not_before)
            self.ramp = 1
        elif self.ramp is not None:
            self.ramp = None if self.ramp >= self.runner.config.concurrency else self.ramp + 1

    async def _wait(self, until: datetime | None) -> None:
        timeout = self.runner.config.poll_s
        if until is not None:
            timeout = min(timeout, max(0.0, (until - self.runner.clock()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.runner.wake.wait(), timeout=timeout)

    async def _line(
        self, batch: Any, row: Any, model: str, principal: Principal | None, request_id: str, attempt: int
    ) -> tuple[int, int, progress.Outcome]:
        try:
            outcome = await self._call(batch, row, model, principal, request_id, attempt)
        except Exception as exc:  # the call itself broke: count it as a gateway fault, retried
            log.exception("batch %s line %s: the in-process call failed", batch.id, row.line)
            error = {"code": "internal_error", "message": f"the gateway failed on this line: {type(exc).__name__}"}
            outcome = self._retry_or_fail(500, None, error, attempt, {})
        return row.line, attempt, outcome

    async def _call(
        self, batch: Any, row: Any, model: str, principal: Principal | None, request_id: str, attempt: int
    ) -> progress.Outcome:
        runner = self.runner
        if principal is None:
            error = {
                "error": {
                    "message": "the key that created this batch was revoked (a batch created in open mode: "
                    "the gateway now requires an API key)",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
            return progress.Outcome("failed", 401, orjson.dumps(error))
        body = row.body.encode()
        if model and model != batch.model:
            body = orjson.dumps({**orjson.loads(body), "model": model})
        tags = ",".join(f"{k}={v}" for k, v in (batch.tags or {}).items())
        caller = inprocess.InProcess(principal, request_id, BatchLine(batch.id, runner.config.discount))
        reply = await inprocess.call(
            runner.app, batch.endpoint, body, caller, {"x-margin-tags": tags} if tags else None
        )
        if reply.status < 400:
            return progress.Outcome("done", reply.status, reply.body)
        if _limiter_refused(reply) and progress.deferrals(attempt) < progress.MAX_DEFERRALS:
            return self._deferred(reply)
        return self._retry_or_fail(reply.status, reply.body, None, attempt, reply.headers)

    def _deferred(self, reply: inprocess.Reply) -> progress.Outcome:
        """Margin's own rate limiter refused the line: it waits (pending) until the refusal's retry-after, as
        OpenAI paces a job's lines within its window, and the try is not counted (the job's expiry bounds the
        waits: its pending lines end `expired`)."""
        delay = retry_after_s(reply.headers.get("retry-after"))
        not_before = self.runner.clock() + timedelta(seconds=min(1.0 if delay is None else delay, 300.0))
        return progress.Outcome("pending", None, None, None, not_before, deferred=True)  # nothing kept: no answer

    def _retry_or_fail(
        self,
        status: int,
        body: bytes | None,
        error: dict[str, Any] | None,
        attempt: int,
        headers: Mapping[str, str],
    ) -> progress.Outcome:
        tried = progress.tries(attempt)
        if may_pass_later(status, headers) and tried < self.runner.config.max_attempts:
            delay = retry_after_s(headers.get("retry-after"))
            delay = float(2**tried) if delay is None else delay
            not_before = self.runner.clock() + timedelta(seconds=min(delay, 300.0))
            return progress.Outcome("pending", status, body, error, not_before)
        return progress.Outcome("failed", status, body, error)


def _limiter_refused(reply: inprocess.Reply) -> bool:
    """Whether an answer is margin's own rate limiter's refusal (its admission: 429 `rate_limit_exceeded`), not
    an upstream's 429 (`UpstreamRateLimited`, a try like any other): told by the error the request path
    refused the line with (`Reply.refused`), not by the answer's text, so a `/v1/messages` line (Anthropic's
    error shape, which has no code) is paced as a chat line is, and no upstream's wording can pass for it."""
    error = reply.refused
    if reply.status != 429 or not isinstance(error, RateLimited) or isinstance(error, UpstreamRateLimited):
        return False
    return error.code == RateLimited.default_code


async def _durable(services: Any) -> None:
    """The lines' ledger rows are in the outbox before their answers complete (so a crash loses none); this
    waits for them to reach the database too, so that a job marked done has its rows readable at once."""
    await services.outbox.flush()
