"""call, the terminal step: the backend. It walks the route decision's candidates in order, skipping
backends whose circuit is open and falling back when one fails before answering (a stream is primed: its
first event is fetched before any byte is sent, so an upstream that fails at once is still a fallback or a
proper HTTP error). A stream is delivered from here (`margin.pipeline.stream`), so this step returns when
the stream is over. Whatever happened, the attempt is metered here, once: usage (the backend's, else counted
with the model's tokenizer, else estimated) → cost, energy and carbon (`margin.economics`), which the
cache, the headers and the ledger row all reuse."""

from __future__ import annotations

import asyncio
import logging
import time

from margin.backends.payloads import echoed_prompts, prompt_extras, prompt_text, token_id_count, usage_chunk
from margin.economics import tiers
from margin.economics.meter import Meter, discounted, plus
from margin.economics.money import to_nanousd
from margin.economics.rates import tokens_per_s
from margin.errors import (
    BackendError,
    BackendFailedUnexpectedly,
    BusyTimeAllowance,
    FeatureDisabled,
    MarginError,
    Overloaded,
    ResidencyUnavailable,
    ResponseTooLarge,
    StreamTimeLimit,
    UpstreamRateLimited,
)
from margin.governance.admission import worst_case_usd
from margin.governance.service import Governance
from margin.pipeline.allowance import TimeAllowance, held_busy, priced_energy_cap
from margin.pipeline.ceiling import held
from margin.pipeline.steps.cache import cache_scope
from margin.pipeline.stream import Delivery, close, first_chunk
from margin.pipeline.topup import top_up
from margin.pipeline.values import Record, Reply, Request, RouteDecision
from margin.protocol import Endpoint, service_tier
from margin.routing.breaker import Breakers
from margin.specs import AdmissionConfig
from margin.types import Call, CallStats, Chunk, Completion, Target, Usage, choices_of, generated_text

log = logging.getLogger("margin.call")
OPENAI_USAGE = (Endpoint.CHAT, Endpoint.COMPLETIONS)  # whole answers whose usage is OpenAI's chat usage
TRANSLATED = (Endpoint.RESPONSES, Endpoint.MESSAGES)  # rows of chats whose answer becomes another API's


def translate(backend: str, exc: Exception) -> MarginError:
    if isinstance(exc, MarginError):
        return exc
    log.warning("backend %s raised %s", backend, exc.__class__.__name__, exc_info=exc)
    return BackendFailedUnexpectedly(f"backend {backend} failed: {exc.__class__.__name__}: {exc}")


def retryable(error: MarginError) -> bool:
    """Worth trying the next candidate: the backend failed, timed out, is overloaded or rate limits us (not a
    bad request)."""
    return isinstance(error, BackendError | Overloaded | UpstreamRateLimited)


def backend_fault(error: MarginError) -> bool:
    """What the circuit breaker counts: the backend itself failed (5xx, timeout, unreachable). Never a client
    error (4xx, a bad schema or token id), a full queue, or an exception the request's input provoked: no
    caller can open a backend's circuit for every tenant (nor by asking for an answer over its size limit, nor
    by the time allowance of its own hard budget)."""
    return isinstance(error, BackendError) and not isinstance(
        error, BackendFailedUnexpectedly | StreamTimeLimit | ResponseTooLarge | BusyTimeAllowance
    )


def refused(error: MarginError) -> bool:
    """An attempt that did no work: the backend refused it (its own check, an upstream's 4xx or 429, a full
    queue) or it never reached a model (`BackendError.unsent`: no connection, TLS failed, margin's own key
    refused, Anthropic's 529). Nothing was generated and no provider bills it, so it counts no tokens (it counted
    the prompt, priced at the model's rate, before). A failure after the request was sent (a 5xx, a timeout, a
    broken answer) keeps the counted prompt: the upstream may have done, and billed, the work."""
    return not isinstance(error, BackendError) or error.unsent


def unavailable(decision: RouteDecision, detail: str) -> Overloaded | ResidencyUnavailable:
    if decision.jurisdictions is not None:
        return ResidencyUnavailable(
            f"no healthy backend in the allowed jurisdictions {list(decision.jurisdictions)} can serve "
            f"`{decision.requested}` ({detail}); the request was not sent elsewhere"
        )
    return Overloaded(f"no healthy backend can serve `{decision.requested}` ({detail})", code="backend_unavailable")


def estimate_tokens(text: str) -> int:
    """~4 characters a token (English BPE); only used when neither backend nor tokenizer can say."""
    return max(1, round(len(text) / 4)) if text else 0


def counted_usage(target: Target, call: Call, output: str) -> Usage:
    """The tokens the backend did not report: counted with its tokenizer, else estimated. The prompt is its
    messages' text plus the tool definitions and tool calls it carries, and its token ids (a completion prompt
    or embedding input given as ids: tokens already, counted as they are, as admission counts them); `output`,
    all that was generated. Token ids and nothing to estimate (an embedding of ids): `token_ids`, exact."""
    prompt, ids = prompt_text(call), token_id_count(call.request)
    if extras := prompt_extras(call.request):
        prompt = f"{prompt}\n{extras}"
    # an `echo` completion's answers repeat its prompt: that is not output (it was billed as output twice over)
    echoed, copies = echoed_prompts(call.request)
    counted_in, counted_out = target.backend.count_tokens(prompt), target.backend.count_tokens(output)
    if counted_in is not None and counted_out is not None:
        repeated = (target.backend.count_tokens(echoed) or 0) * copies if echoed else 0
        return Usage(counted_in + ids, max(0, counted_out - repeated), source="tokenizer")
    source = "token_ids" if ids and not prompt and not output else "estimated"
    # the estimate reads only the length: what is left once the echoed characters are taken off
    return Usage(estimate_tokens(prompt) + ids, estimate_tokens(output[len(echoed) * copies :]), source=source)


def accounted(output: Completion | Delivery | None, metered: Usage | None, endpoint: Endpoint) -> None:
    """A whole chat or completion answer says the usage the request was metered at (`metered`: the row's) where
    its own does not (`Usage.says`), as a stream's usage event does: usage margin could not read (none, one that
    counts no prompt, `{"completion_tokens": 5}`, junk counts: OpenAI's answer always has usage), usage held at a
    hard budget's ceiling (10^9 tokens reported, the row held at its limit), cached tokens past the prompt. Before,
    it went out as it came while the row was counted, estimated or held. An answer whose usage is the row's is
    left as it came (its raw bytes forwarded)."""
    if metered is None or not isinstance(output, Completion) or endpoint not in OPENAI_USAGE:
        return
    if not metered.says(output.payload.get("usage")):
        output.payload["usage"] = metered.to_openai()
        output.raw = None  # serialized again with it


class BackendCall:
    def __init__(
        self, meter: Meter, breakers: Breakers, admission: AdmissionConfig, governance: Governance | None = None
    ) -> None:
        self.meter = meter  # shares busy time among concurrent requests, prices the answer
        self.breakers = breakers
        self.admission = admission
        self.governance = governance  # tops up a fallback's reservation by what failed attempts were billed

    async def __call__(self, request: Request) -> Reply:
        decision = request.routed()
        if decision.cache_only:
            raise FeatureDisabled(
                f"flag `{decision.cache_only}` allows only cached answers and this request is not in the cache",
                code="feature_disabled",
            )
        candidates = [t for t in decision.candidates if self.breakers.available(t.backend_name)]
        if not candidates:
            raise unavailable(decision, "circuit open on " + ", ".join(t.backend_name for t in decision.candidates))
        last: MarginError | None = None
        if candidates[0] is not decision.candidates[0]:  # the first choice's circuit is open: the row says so
            last = Overloaded(f"circuit open on {decision.candidates[0].backend_name}", code="backend_unavailable")
        notices = request.record.notices
        before = dict(notices)  # what the answer says before a backend adds its own (`x-margin-dropped-params`)
        covered = 0  # nano-USD of the failed attempts' charges the reservation was topped up by (`top_up`)
        for index, target in enumerate(candidates):
            name = target.backend_name
            covered = await self._cover(request, covered)  # BudgetExceeded: no room for another attempt
            if not self.breakers.acquire(name):  # opened (or probed by another request) since the check above
                last = Overloaded(f"circuit open on {name}", code="backend_unavailable")
                continue
            if notices != before:  # a fallback: what the backend that failed noted does not describe this one
                notices.clear()
                notices.update(before)
            started = time.perf_counter()
            try:
                reply = await self._attempt(request, target)
            except MarginError as exc:
                if not retryable(exc):
                    self.breakers.release(name)
                    raise
                self._failed(name, exc)
                last = exc
                _carry_charge(request.record)
                if index + 1 < len(candidates):
                    log.warning("request %s: %s failed (%s); falling back", request.id, name, exc)
                continue
            except BaseException:  # cancelled (the client left) or a bug: no verdict on the backend
                self.breakers.release(name)
                raise
            if request.record.error is None:  # a stream that broke after its start was told to the breaker
                self.breakers.success(name, time.perf_counter() - started)
            _note_recovery(request, last)
            return reply
        assert last is not None
        if decision.residency_filtered or last.code == "backend_unavailable":
            raise unavailable(decision, f"last error: {last.message}") from last
        raise last

    async def _cover(self, request: Request, covered: int) -> int:
        """After a billed failure, the reservation topped up by what it was billed (`margin.pipeline.topup`);
        nothing to do (no store round trip) before the first attempt or after failures that were not billed."""
        if request.record.earlier_charge is None or self.governance is None:
            return covered
        return await top_up(self.governance, request, covered)

    def _failed(self, backend: str, error: MarginError) -> None:
        """Tell the breaker: a fault of the backend counts; anything else only shows in /admin/backends."""
        if backend_fault(error):
            self.breakers.failure(backend, error.code, error.message)
        else:
            self.breakers.note(backend, error.code, error.message)
            self.breakers.release(backend)

    async def _attempt(self, request: Request, target: Target) -> Reply:
        record = request.record
        record.target = target
        upstream = target.model.upstream_model or target.public
        stats = CallStats(notices=record.notices)  # a backend's headers (`x-margin-dropped-params`) are the answer's
        # the tenant: a key (of its org), the one caller whose prompt a backend's KV cache may reuse for this call
        call = Call(
            request.endpoint, request.body, request.raw, target.public, upstream, request.id, stats,
            cache_scope(request, "key"),
        )  # fmt: skip
        clock = self.meter.clocks[target.backend_name]
        mark, probe = clock.enter(), self.meter.probe(target.backend_name)
        seconds = request.routed().busy_allowance.get(target.public)  # a hard budget's, on a TCO-priced backend
        allowance = None if seconds is None else TimeAllowance.start(target.backend_name, seconds)
        usage: Usage | None = None
        output: Completion | Delivery | None = None
        try:
            if request.is_stream and request.endpoint is not Endpoint.EMBEDDINGS:
                delivery = Delivery(request)
                output = delivery
                await self._stream(request, target, call, delivery, allowance)
                usage = delivery.usage or call.stats.closed_usage
                if delivery.failed is not None:  # broke mid-stream: the row and the breaker hear of it
                    record.fail(delivery.failed, request.client.status_of(delivery.failed))
                    self._failed(target.backend_name, delivery.failed)
                return Reply(
                    streamed=True,
                    delivered=delivery.text,
                    generated=delivery.generated,
                    finish=delivery.finish_reason,
                    unreplayed=delivery.unreplayed,
                )
            completion = await self._waited(record, target, call, allowance)
            _translatable(record, completion, call, target.backend_name)
            usage, output = completion.usage, completion
            return Reply(completion=completion)
        except MarginError as exc:
            # refused: nothing was generated, nor sent to be billed, the row counts no tokens; else a failed answer
            # that says what it billed (`closed_usage`) is counted at that, not estimated
            usage = Usage(source="refused") if refused(exc) else call.stats.closed_usage
            raise
        finally:
            if call.stats.attempts > 1 and record.error is None:  # retried on this backend before it answered
                record.status, record.fault_code = "retried", call.stats.retried
            busy_share = clock.leave(mark)
            busy = call.stats.busy_s if call.stats.busy_s is not None else busy_share
            busy = held_busy(busy, allowance, request.id)  # never more than its hard budget reserved
            measured = self.meter.measured_j(probe, busy)
            text, cancelled = "", None
            if usage is None:
                try:
                    text = await _output_text(output)
                except asyncio.CancelledError as exc:  # cancelled again meanwhile: the row is still metered
                    text, cancelled = output.generated_now() if isinstance(output, Delivery) else "", exc
            cap, served = self._energy_cap(target, allowance), _served_tier(request, output)
            self._meter(request, target, call, usage, text, busy, measured, cap, served)
            accounted(output, record.usage, call.endpoint)
            if cancelled is not None:
                raise cancelled

    def _energy_cap(self, target: Target, allowance: TimeAllowance | None) -> float | None:
        hardware = self.meter.settings.backends[target.backend_name].hardware
        return priced_energy_cap(allowance, hardware.watts_busy if hardware is not None else None)

    async def _waited(self, record: Record, target: Target, call: Call, allowance: TimeAllowance | None) -> Completion:
        """The whole answer, within a hard budget's time allowance; the wait is the row's `backend_wait_s`."""
        started = time.perf_counter()
        try:
            whole = self._whole(target, call)
            return await (whole if allowance is None else allowance.within(whole))
        finally:
            record.backend_wait_s += time.perf_counter() - started

    @staticmethod
    async def _whole(target: Target, call: Call) -> Completion:
        try:
            if call.endpoint is Endpoint.EMBEDDINGS:
                return await target.backend.embed(call)
            return await target.backend.complete(call)
        except Exception as exc:
            raise translate(target.backend_name, exc) from exc

    async def _stream(
        self, request: Request, target: Target, call: Call, delivery: Delivery, allowance: TimeAllowance | None
    ) -> None:
        name = target.backend_name
        try:
            chunks = target.backend.stream(call)
        except Exception as exc:
            raise translate(name, exc) from exc
        if allowance is not None:  # its reads end at the allowance
            chunks = allowance.chunks(chunks)
        try:
            first = await first_chunk(chunks, request.record)
            if first is not None:
                _parse_first(name, first)  # a garbled first event is still a fallback, not a broken stream
                request.record.start_usage = first.start_usage  # beside the chunks (a Messages `message_start`'s)
                delivery.tier = tiers.answered(first.payload)  # OpenAI names the tier in every event
        except Exception as exc:
            await close(chunks)
            raise translate(name, exc) from exc
        await delivery.run(chunks, first, lambda exc: translate(name, exc))
        if delivery.failed is None and request.record.endpoint in TRANSLATED and not await delivery.translatable():
            # as a whole answer's (`_translatable`): the upstream's bad response, billed at the usage it reported
            why = f"upstream {name} sent a stream with no choice to translate"
            await delivery.fail(BackendError(why, code="upstream_bad_response"))
            return
        if request.wants_usage and not delivery.usage_sent:
            # what the client is told is what it is charged (margin.pipeline.ceiling)
            usage = held(delivery.usage or counted_usage(target, call, await delivery.generated()), request, target)
            delivery.usage = usage
            await delivery.write_usage(usage_chunk(call, usage, first.payload if first is not None else None))

    def _meter(
        self,
        request: Request,
        target: Target,
        call: Call,
        usage: Usage | None,
        text: str,
        busy_s: float,
        measured_j: float | None,
        priced_j_cap: float | None = None,
        tier: str | None = None,
    ) -> None:
        """The attempt's usage → its cost, energy and carbon: computed once, for the row, the headers and
        the cache. `text`: the answer's, counted when the backend reported no usage. `priced_j_cap`: the
        energy a hard budget's allowance priced (`Meter.charge`). `tier`: the `service_tier` that served it
        (what the answer said, else what was asked for)."""
        record = request.record
        if usage is not None and usage.source == "refused" and record.usage is not None:
            return  # a fallback refused after an earlier attempt was charged (sent, may be billed): that charge stands
        if usage is None:
            usage = counted_usage(target, call, text)
        usage = held(usage, request, target)  # never more than the request could be billed for
        record.usage, record.finish_reason = usage, call.stats.finish_reason
        record.stop_sequence = call.stats.stop_sequence
        record.queue_s = call.stats.queue_s
        record.service_tier = tier  # what the upstream said served it (else what was asked): priced as below
        tier = tiers.priced(tier, self.meter.settings.backends[target.backend_name])
        charge = self.meter.charge(
            target.public, target.model, usage, busy_s, measured_j, priced_j_cap=priced_j_cap, tier=tier
        )
        charge = charge if record.batch is None else discounted(charge, record.batch.discount)
        record.charge = plus(charge, record.earlier_charge)  # a fallback's: the failed attempts' charges too
        if record.preference is not None:
            self._default(record, target, usage, busy_s)
        decision = request.decision
        if decision is not None and decision.strongest is not None:
            strong = decision.strongest  # what the route's strongest model would have cost (routing's saving)
            same = "default" if tier in (None, "auto") else tier  # the tier this one was served at
            cost, unpriced = worst_case_usd(
                self.meter, [strong], usage.input_tokens, usage.output_tokens, self.admission, tier=same
            )
            record.counterfactual_nanousd = None if unpriced else to_nanousd(cost)

    def _default(self, record: Record, target: Target, usage: Usage, busy_s: float) -> None:
        """What a preference route's default deployment would have cost and emitted for the same tokens, now
        (its busy time scaled by the two backends' configured throughputs)."""
        assert record.preference is not None and record.charge is not None
        default, charge = record.preference.default, record.charge
        if default.backend_name != target.backend_name:
            fallback = self.admission.reserve_tokens_per_s
            scale = tokens_per_s(self.meter, target.backend_name, fallback) / tokens_per_s(
                self.meter, default.backend_name, fallback
            )
            tier = tiers.priced(record.service_tier, self.meter.settings.backends[default.backend_name])
            charge = self.meter.charge(default.public, default.model, usage, busy_s * scale, tier=tier)
            if record.batch is not None:
                charge = discounted(charge, record.batch.discount)
        record.default_cost_nanousd = None if charge.cost_usd is None else to_nanousd(charge.cost_usd)
        record.default_co2e_g = charge.co2e_g


async def _output_text(output: Completion | Delivery | None) -> str:
    """What the answer generated, to count when the backend reported no usage: tool calls and reasoning are
    output too (counting the content alone billed a tool-calling answer 0 output tokens)."""
    if isinstance(output, Completion):
        return generated_text(output.payload, "message")
    return await output.generated() if output is not None else ""


def _translatable(record: Record, completion: Completion, call: Call, backend: str) -> None:
    """A whole answer to a Responses or Messages request must hold a choice to translate: one whose `choices` is
    not a list of an object (a chat client gets such an answer as it came) would be an empty Response or Message
    said to be complete. It is the upstream's bad response instead (a 502, the row an upstream error), billed at
    the usage it reported."""
    choices = choices_of(completion.payload)
    if record.endpoint not in TRANSLATED or (choices and isinstance(choices[0], dict)):
        return
    call.stats.closed_usage = completion.usage
    why = f"upstream {backend} sent an answer with no choice to translate"
    raise BackendError(why, code="upstream_bad_response")


def _served_tier(request: Request, output: Completion | Delivery | None) -> str | None:
    """The `service_tier` an attempt is charged at: what its answer said (a stream's first or usage event, a
    JSON answer's field), else what the request asked for."""
    answered = output.tier if isinstance(output, Delivery) else tiers.answered(getattr(output, "payload", None))
    return tiers.served(answered, service_tier(request.body))


def _carry_charge(record: Record) -> None:
    """An attempt failed and the walk goes on: what it was charged (with the attempts before it) is kept, to be
    added to the next attempt's. Before, the next attempt's charge replaced it: a fallback's row (and the budgets
    settled to it) left out what the failed attempt's upstream billed, usage it had reported included. An
    attempt refused before any work (`refused`) is charged nothing and adds nothing."""
    usage = record.usage
    if usage is not None and usage.source != "refused":
        record.earlier_charge = record.charge


def _note_recovery(request: Request, fault: MarginError | None) -> None:
    """An answer that needed a fallback or a retry says so in its row (status, and the fault's code)."""
    record = request.record
    if record.error is not None:  # a stream that broke after its start: its failure is what the row says
        return
    if fault is not None:
        record.status, record.fault_code = "fallback", fault.code


def _parse_first(backend: str, chunk: Chunk) -> None:
    """Parse the stream's first event before anything is sent (its text is the first token's anyway)."""
    try:
        if not isinstance(chunk.payload, dict):
            raise ValueError("not an object")
        _ = chunk.text
    except (ValueError, TypeError, AttributeError) as exc:
        raise BackendError(f"upstream {backend} sent an invalid stream event", code="upstream_bad_response") from exc
