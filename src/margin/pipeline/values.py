"""The values the request path passes between its steps (`margin.pipeline.flow`).

`Request` is what the client asked and what the steps decided about it, immutable: a step that decides
something passes a copy onward (`request._replace(...)`: a named tuple, whose copy costs ~1 µs where a frozen
dataclass's `replace` cost ~6). `RouteDecision` is where the request may go,
decided once. `Record` is the one mutable value: what the ledger row needs, filled in as the request goes
and written by the outermost step. `Reply` is what the inner steps answer. `Client` is the answer's way
out (the API layer implements it), driven by the flow itself so that the row is in the outbox before the
answer's last byte."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from margin.economics.meter import Charge
from margin.errors import BackendClientError, BackendError, BackendTimeout, MarginError, UpstreamRateLimited
from margin.governance.admission import Admission
from margin.governance.rules import Subject
from margin.governance.slots import Slots
from margin.protocol import ApiRequest, Endpoint
from margin.routing.prefer import Preference
from margin.specs import BudgetSpec, Policy
from margin.types import BatchLine, Completion, Principal, Target, Usage, generated_text, unreplayed

EMPTY: Mapping[str, str] = MappingProxyType({})
NO_ALLOWANCE: Mapping[str, float] = MappingProxyType({})
NOBODY = Subject()


class ClientGone(Exception):
    """The client left mid-stream (a write failed) or stopped reading (a write blocked past
    `server.stream_write_timeout_s`): the stream ends as `client_closed`."""

    def __init__(self, stalled: bool = False) -> None:
        super().__init__("the client stopped reading the stream" if stalled else "the client left")
        self.stalled = stalled


class Client(Protocol):
    """The answer's way out. Writes raise `ClientGone` once the client is gone."""

    def status_of(self, error: MarginError) -> int:
        """The HTTP status an error is answered with (also what the ledger row records)."""
        ...

    def error_event(self, error: MarginError) -> bytes:
        """An error as the data of one SSE event (OpenAI's error JSON)."""
        ...

    @property
    def stopping(self) -> bool:
        """The server began to stop while this request ran (margin's HTTP protocol marks the request's cycle as
        uvicorn begins its shutdown): a cancellation then is the graceful period's end, told to the client as
        503 `server_shutting_down` and recorded so. False for an in-process caller (the batch worker)."""
        ...

    async def answer(self, body: bytes, headers: Mapping[str, str]) -> None: ...

    async def refuse(self, error: MarginError, headers: Mapping[str, str]) -> None: ...

    async def start_stream(self, headers: Mapping[str, str]) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def end_stream(self, data: bytes) -> None: ...


class RouteDecision(NamedTuple):
    """Where the request may go, decided once by the route step: the candidates in the order they are
    tried (the chosen model first, then its fallbacks; flags and residency applied), and the basis of the
    budget reservation (the prompt and output tokens it prices at the dearest candidate, and the busy time it
    allows each candidate priced by busy time under a hard budget). The call step walks the candidates;
    nothing else re-decides."""

    candidates: tuple[Target, ...]
    requested: str
    route: str | None = None  # a routed name (`routes:`): a router put its choice first
    router_score: float | None = None  # P(the cheap model is adequate), as the router saw it
    strongest: Target | None = None  # the routed name's strongest model: what routing saved is priced on it
    jurisdictions: tuple[str, ...] | None = None  # the caller's allowed jurisdictions, when its policy sets them
    residency_filtered: bool = False  # some fallbacks were dropped for residency
    cache_only: str | None = None  # the flag that allows only cached answers
    prompt_tokens: int = 0  # the prompt's estimated tokens (counted when budgets or limits apply): TPM, max_tokens
    prompt_bound: int = 0  # the most input tokens it can be billed for (margin.pipeline.ceiling): reserved
    output_tokens: int = 0  # the most output it can be billed for: reserved (a prediction's bound included)
    predicted: int = 0  # of those, what a Predicted Output may add (`ceiling.prediction_bound`)
    worst_usd: Decimal | None = None  # the dearest priced candidate's cost for those tokens (when budgets apply)
    unpriced: tuple[str, ...] = ()  # candidates without a known price (admission.unknown_price decides)
    budgets: tuple[BudgetSpec, ...] = ()  # the budgets of every candidate, reserved by admit
    # busy seconds reserved for each candidate priced by busy time under a hard USD budget (public name →
    # seconds, `admission.busy_allowance_s`): its call is cut there and its charge held there
    busy_allowance: Mapping[str, float] = NO_ALLOWANCE

    @property
    def first(self) -> Target:
        return self.candidates[0]


class Request(NamedTuple):
    id: str
    endpoint: Endpoint
    headers: Mapping[str, str]
    raw: dict[str, Any]  # the client's JSON (redacted by the guard when its policy redacts)
    body: ApiRequest
    principal: Principal
    client: Client
    record: Record
    started: float
    tags: Mapping[str, str] = EMPTY
    subject: Subject = NOBODY  # the caller as the rules see it (set by auth)
    policy: Policy | None = None
    decision: RouteDecision | None = None
    rewrite: Callable[[dict[str, Any]], bool] | None = None  # rewrites a streamed chunk's payload (guard)
    # the cache step's, on a miss that owns a lease: awaited once, when a stream's first generated event shows
    # more than text (tool calls, reasoning, a refusal: never stored), so the requests waiting on it go now
    unstorable: Callable[[], Awaitable[None]] | None = None
    slot: StreamSlot | None = None  # a stream's place among its key's (admit): traded for a waiting one while it waits

    @property
    def is_stream(self) -> bool:
        return self.record.stream

    @property
    def wants_usage(self) -> bool:
        return bool(getattr(self.body, "include_usage", False))

    def routed(self) -> RouteDecision:
        assert self.decision is not None, "the route step runs before this one"
        return self.decision


@dataclass(slots=True)
class StreamSlot:
    """A stream's place among its key's open streams (`admission.max_streams_per_key`), taken by admit and given
    back when the stream ends. A request that only waits for another's upstream call (an identical cache miss
    coalesced onto it, margin.pipeline.steps.cache) trades it for one of the key's waiting places (`waiting`, as
    many as the cap) and holds that until it ends; it takes a stream place again only to call upstream itself. So
    a burst of identical streams holds one stream place, not one each, and a key holds at most its cap of streams
    calling upstream plus its cap waiting (or replaying what they waited for). Each take is a lease of its own
    (`<request id>:<n>`): a shared pool frees a place in a task of its own, which must not free the one taken
    after it."""

    pool: Slots
    waiting: Slots  # the key's places for streams that only wait for an identical request's answer
    key: str
    request_id: str
    held: str | None = None  # the stream lease held now
    waits: str | None = None  # the waiting lease held now
    takes: int = 0

    @property
    def cap(self) -> int | None:
        return self.pool.cap

    async def retake(self) -> bool:
        """Hold a stream place (True; a waiting place held is given back), or none was free (False); a store
        that cannot answer raises (503)."""
        if self.held is None:
            lease = self.request_id if not self.takes else f"{self.request_id}:{self.takes}"
            self.takes += 1
            if await self.pool.acquire(self.key, lease):
                self.held = lease
        if self.held is not None and self.waits is not None:
            lease, self.waits = self.waits, None
            self.waiting.release(self.key, lease)
        return self.held is not None

    async def wait(self) -> bool:
        """Trade the stream place for a waiting one (True), or keep it when the key's waiting places are all
        taken (False: the caller refuses the request, 429)."""
        if self.waits is None:
            lease = f"{self.request_id}:w{self.takes}"
            self.takes += 1
            if not await self.waiting.acquire(self.key, lease):
                return False
            self.waits = lease
        if self.held is not None:
            lease, self.held = self.held, None
            self.pool.release(self.key, lease)
        return True

    def lend(self) -> None:
        """Give back every place held (never raises, never waits): at the stream's end."""
        if self.held is not None:
            lease, self.held = self.held, None
            self.pool.release(self.key, lease)
        if self.waits is not None:
            lease, self.waits = self.waits, None
            self.waiting.release(self.key, lease)


@dataclass(frozen=True, slots=True)
class CacheHit:
    kind: str  # exact | semantic
    saved_nanousd: int | None
    age_s: int


def outcome_status(error: MarginError) -> str:
    """The ledger status of a failed request: what the upstream did, or `error` for margin's own refusals."""
    if isinstance(error, BackendTimeout):
        return "upstream_timeout"
    if isinstance(error, BackendError):
        return "upstream_error"
    if isinstance(error, UpstreamRateLimited):
        return "upstream_rate_limited"
    if isinstance(error, BackendClientError):
        return "upstream_rejected"
    return "error"


@dataclass(slots=True)
class Record:
    """What the request's ledger row needs. Steps fill in what they learn; the outermost step writes it."""

    request_id: str
    endpoint: Endpoint
    requested_model: str
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    principal: Principal | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None  # the OpenAI `user` the caller sent (pseudonymized in the row)
    target: Target | None = None
    route: str | None = None
    router_score: float | None = None
    counterfactual_nanousd: int | None = None
    preference: Preference | None = None  # a lowest-carbon / lowest-cost route's choice
    default_cost_nanousd: int | None = None  # what its default deployment would have cost for the same tokens
    default_co2e_g: float | None = None  # … and emitted
    batch: BatchLine | None = None  # a batch line (the batch worker's in-process call): its id and discount
    guard: dict[str, Any] | None = None  # what the guard found (counts by type, never values)
    prompt_log: str | None = None
    cache_hit: CacheHit | None = None
    admission: Admission | None = None  # what admit reserved; settled by the outermost step
    usage: Usage | None = None
    charge: Charge | None = None
    # what the attempts that failed before the one being metered were charged (summed): added to its charge, so a
    # fallback's row and its budgets' settlement carry every attempt an upstream may bill (margin.pipeline.steps.call)
    earlier_charge: Charge | None = None
    service_tier: str | None = None  # the processing tier it was charged at (metered calls only, not cache hits)
    finish_reason: str | None = None
    stop_sequence: str | None = None  # the stop sequence that ended the answer, where the backend names it
    # the usage an anthropic backend's upstream told at its stream's start (`Chunk.start_usage`, the attempt's first
    # chunk's): a Messages client's `message_start` (margin.api.messages_out); None from any other backend
    start_usage: dict[str, int] | None = None
    ttft_s: float | None = None
    backend_wait_s: float = 0.0
    client_wait_s: float = 0.0
    queue_s: float | None = None
    e2e_s: float | None = None
    status: str = "ok"  # ok | retried | fallback | client_closed | upstream_* (see `outcome_status`) | error
    http_status: int = 200
    error: MarginError | None = None
    fault_code: str | None = None  # an answer after a retry or a fallback: the code of the fault it got past
    notices: dict[str, str] = field(default_factory=dict)  # extra response headers (budget warnings, cache…)

    def fail(self, error: MarginError, http_status: int, status: str | None = None) -> None:
        self.error, self.http_status, self.status = error, http_status, status or outcome_status(error)

    def found(self, record: Mapping[str, Any]) -> None:
        if record:
            self.guard = {**(self.guard or {}), **record}

    def overhead_ms(self) -> float:
        """Time spent in margin itself: everything but waiting on the backend and on the client."""
        total = self.e2e_s if self.e2e_s is not None else time.perf_counter() - self.started
        return max(0.0, (total - self.backend_wait_s - self.client_wait_s) * 1000)


@dataclass(slots=True)
class Reply:
    """What the inner steps answer: a whole answer (`completion`), or a stream the call step has already
    delivered (`delivered`: its text, read only when a step needs it, off the event loop when it is long;
    the stream's closing bytes are the flow's, after the row is written)."""

    completion: Completion | None = None
    streamed: bool = False
    delivered: Callable[[], Awaitable[str]] | None = None
    generated: Callable[[], Awaitable[str]] | None = None  # a stream's `Delivery.generated`
    finish: Callable[[], str | None] | None = None  # a stream's `Delivery.finish_reason`: read when it is stored
    unreplayed: Callable[[], Awaitable[bool]] | None = None  # a stream's `Delivery.unreplayed`: read when stored

    def finish_reason(self, record: Record) -> str | None:
        """The finish reason a cache hit of this answer replays: the backend's, or one its stream's last events
        name (read only for an answer the cache stores, not on every stream)."""
        return record.finish_reason or (self.finish() if self.finish is not None else None)

    async def text(self) -> str:
        if self.completion is not None:
            return self.completion.text
        return await self.delivered() if self.delivered is not None else ""

    async def text_only(self) -> bool:
        """Whether the answer generated nothing but its text (no tool calls, reasoning or refusal), and holds
        nothing else a hit would drop (citations, images, audio: `margin.types.unreplayed`)."""
        if self.completion is not None:
            if unreplayed(self.completion.payload, "message"):
                return False
            everything = generated_text(self.completion.payload, "message")
        else:
            if self.unreplayed is not None and await self.unreplayed():
                return False
            everything = await self.generated() if self.generated is not None else ""
        return len(everything) == len(await self.text())


Next = Callable[[Request], Awaitable[Reply]]


class Step(Protocol):
    """One step of the request path: the request side before `await next(request)`, the response side
    after it, in one frame."""

    async def __call__(self, request: Request, next: Next) -> Reply: ...
