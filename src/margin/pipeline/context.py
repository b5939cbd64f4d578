"""The one object that flows through the pipeline."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from margin.backends.base import Backend, Call, Completion, Usage
from margin.config import ModelConfig
from margin.economics.meter import Charge
from margin.errors import MarginError
from margin.protocol import ApiRequest, Endpoint


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str | None
    name: str
    team: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    org: str | None = None
    is_admin: bool = False
    policy: Mapping[str, Any] | None = None


ANONYMOUS = Principal(key_id=None, name="anonymous", team=None)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the public model, its config and the backend that serves it."""

    public: str
    model: ModelConfig
    backend_name: str
    backend: Backend
    region: str
    jurisdiction: str | None = None


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A line of a batch job run by the batch worker (margin.batches): its ledger row carries `batch_id`, and
    `discount` of its metered cost is taken off. Only the in-process call sets it (`margin.api.inprocess`)."""

    batch_id: str
    discount: Decimal


@dataclass(slots=True)
class Preference:
    """A `lowest-carbon`/`lowest-cost` route's choice: the default deployment (the route's first allowed
    one) and, once metered, what it would have cost and emitted for the same tokens (the counterfactual)."""

    objective: Literal["carbon", "cost"]
    default: Target
    default_cost_nanousd: int | None = None
    default_co2e_g: float | None = None


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: Endpoint
    headers: Mapping[str, str]
    raw: dict[str, Any]
    request: ApiRequest
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    principal: Principal | None = None
    tags: dict[str, str] = field(default_factory=dict)
    target: Target | None = None
    candidates: list[Target] = field(default_factory=list)  # target first, then its compliant fallbacks
    residency_filtered: bool = False  # some fallbacks were dropped for residency
    policy: Any = None  # governance.specs.Policy, resolved for this caller
    admission: Any = None  # governance.admission.Admission: what was reserved, settled by `settle`
    require_cache: str | None = None  # the flag that allows only cached answers
    stream_slot: str | None = None  # the key whose stream slot this request holds (released when it ends)
    guard: dict[str, Any] | None = None  # what the guard found (counts by type, never values)
    prompt_log: str | None = None  # redacted prompt text, only when the policy logs prompts
    guard_state: Any = None  # guard.Redaction of this request (placeholders ↔ originals), never logged
    route: str | None = None  # a routed name (`routes:`): the router picks among the candidates
    router_score: float | None = None  # P(the cheap model is adequate) as the router saw it
    counterfactual_nanousd: int | None = None  # what the strongest model of the route would have cost
    preference: Preference | None = None  # set by a lowest-carbon / lowest-cost route
    batch: BatchLine | None = None  # set for a batch line (in-process call of the batch worker)
    cache_key: str | None = None  # set when the request may be cached
    semantic: Any = None  # (where, embedding) of a semantic lookup, reused to add the answer
    cache_hit: dict[str, Any] | None = None  # {"type": exact|semantic, "saved_nanousd", "age_s"} on a hit
    stream_rewrite: Any = None  # callable(chunk payload) -> bool: rewrites streamed text (PII restore)
    notices: dict[str, str] = field(default_factory=dict)  # extra response headers (budget warnings…)
    call: Call | None = None
    completion: Completion | None = None
    stream: AsyncIterator[bytes] | None = None
    usage: Usage | None = None
    delivered_text: list[str] = field(default_factory=list)
    ttft_s: float | None = None
    backend_wait_s: float = 0.0
    client_wait_s: float = 0.0
    busy_share_s: float | None = None
    measured_j: float | None = None
    e2e_s: float | None = None
    status: str = "ok"
    http_status: int = 200
    error: MarginError | None = None
    charge: Charge | None = None
    finished: bool = False

    @property
    def is_stream(self) -> bool:
        return bool(getattr(self.request, "stream", False))

    @property
    def requested_model(self) -> str:
        return self.request.model

    def fail(self, error: MarginError, status: str = "error") -> None:
        self.error = error
        self.status = status
        self.http_status = error.status

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def overhead_ms(self) -> float:
        """Time spent in margin itself: everything but waiting on the backend and on the client."""
        total = self.e2e_s if self.e2e_s is not None else time.perf_counter() - self.started
        return max(0.0, (total - self.backend_wait_s - self.client_wait_s) * 1000)
