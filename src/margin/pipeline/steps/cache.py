"""cache: answer from the exact cache (and, when enabled, the error-bounded semantic cache) before the call;
store what the call produced once it is metered (so every later hit knows what it saved).

A hit replays the stored answer (as JSON or as SSE chunks), costs nothing, and is recorded as a ledger row
of kind `cache_hit` with `saved_nanousd` = what producing it cost. The stored text is the backend's own
(before any PII restore for the caller: the guard step is outside this one), so an entry never carries one
caller's data into another's answer. In the path only when `cache.enabled`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from margin.backends import payloads
from margin.cache.exact import CacheStore, Entry, RedisCache, deterministic, request_key
from margin.cache.flight import Flight, Flights, Lease, LocalFlights
from margin.cache.layer import SemanticLayer, Where
from margin.cache_config import CacheConfig
from margin.economics.money import to_nanousd
from margin.errors import InvalidRequest, too_many_streams
from margin.governance.service import Governance
from margin.pipeline.stream import Delivery
from margin.pipeline.topup import give_back, take_back
from margin.pipeline.values import CacheHit, Next, Record, Reply, Request
from margin.protocol import ApiRequest, Endpoint
from margin.types import Call, Chunk, Completion, Target

HEADER = "x-margin-cache"


def cache_scope(request: Request, scope: str) -> str:
    """Who shares entries with this caller. Teams and keys are qualified by their org, so two orgs' teams
    named `support` share nothing; the parts are JSON-encoded, so no choice of names makes two scopes equal."""
    principal = request.principal
    if scope == "global":
        return "global"
    if scope == "team" and principal.team:
        return orjson.dumps(["team", principal.org, principal.team]).decode()
    return orjson.dumps(["key", principal.org, principal.key_id]).decode()


def served_by(target: Target) -> str:
    """The model a key names: its public name, the backend that serves it and the name it has there. An entry
    outlives a config (the SQLite table a restart, a Redis every replica of a rolling upgrade), so re-pointing
    `m` at another backend or `upstream_model` misses instead of replaying the old model's answers for `ttl_s`."""
    upstream = target.model.upstream_model or target.public
    return orjson.dumps([target.public, target.backend_name, upstream]).decode()


UNCACHED = (Endpoint.EMBEDDINGS, Endpoint.COMPACT)  # answers that are not a chat's or a completion's text


def wanted(request: Request) -> bool:
    mode = request.headers.get(HEADER)
    if mode is not None and mode not in ("on", "off"):
        raise InvalidRequest(f"{HEADER} must be `on` or `off`, not {mode!r}", param=HEADER)
    if mode == "off" or request.endpoint in UNCACHED or not replayable(request.body):
        return False
    return mode == "on" or deterministic(request.raw)


def replayable(body: ApiRequest) -> bool:
    """A hit replays one choice of text: a request for more answers (`n`, `best_of`, several prompts) or for
    logprobs cannot be answered from the cache (before, `n: 2` at temperature 0 was answered, the second
    time, with one choice holding both texts run together, and logprobs were dropped)."""
    if getattr(body, "choices", 1) > 1 or getattr(body, "prompts", 1) > 1:
        return False
    logprobs = getattr(body, "logprobs", None)
    return logprobs is None or logprobs is False


def ended(payload: dict[str, Any], entry: Entry) -> dict[str, Any]:
    """The answer's (or its last chunk's) choice names the stop sequence that ended the stored answer, as the
    first answer's did (`stop_reason`, vLLM's name, which `/v1/messages` gives as `stop_sequence`)."""
    if entry.stop_sequence is not None:
        payload["choices"][0]["stop_reason"] = entry.stop_sequence
    return payload


async def replay(call: Call, entry: Entry) -> AsyncIterator[Chunk]:
    yield Chunk(payload=payloads.chunk(call, entry.text, first=True), text=entry.text)
    yield Chunk(payload=ended(payloads.chunk(call, "", entry.finish_reason), entry))
    yield Chunk(payload=payloads.usage_chunk(call, entry.usage), usage=entry.usage)


async def answer_entry(record: Record, reply: Reply) -> Entry | None:
    """The entry a hit replays for this answer; None for one it could not: a stream whose last events name no
    finish reason was cut off (an upstream's connection ended mid-answer, without `[DONE]` or with it), and a
    hit would replay its half as a whole answer (`stop`; an openai backend fails a stream that ended so without
    `[DONE]`, and a server that omits `[DONE]` still names its finish). Nor one that finished with `error`
    (OpenRouter's choice of an answer that failed, without an error object)."""
    usage, target = record.usage, record.target
    if usage is None or target is None:
        return None
    finish = reply.finish_reason(record)
    if (finish is None and reply.streamed) or finish == "error":  # an answer that ended failing: not replayed
        return None
    cost = record.charge.cost_usd if record.charge is not None else None
    return Entry(
        text=await reply.text(),
        finish_reason=finish or "stop",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_nanousd=None if cost is None else to_nanousd(cost),
        model=target.public,
        created_at=time.time(),
        stop_sequence=record.stop_sequence,
    )


@dataclass(slots=True)
class Owner:
    """A lease this request owns, landed once: at the call's end, or sooner (`release`) when its stream's first
    token shows an answer the cache does not store, so that its waiters go upstream then, not at its end."""

    flights: Flight
    lease: Lease
    ttl_s: float
    landed: bool = False

    async def land(self, entry: Entry | None) -> None:
        self.landed = True
        await self.flights.land(self.lease, entry, self.ttl_s)

    async def release(self) -> None:
        await self.land(None)


class Cache:
    def __init__(
        self,
        config: CacheConfig,
        store: CacheStore,
        semantic: SemanticLayer | None = None,
        limits: Mapping[str, float] | None = None,
        governance: Governance | None = None,
    ) -> None:
        """`limits`: each backend's time limit for one call (`timeout_s`), the longest a lease on its misses lasts.
        `governance`: where a waiter gives its budget reservation back while it waits (`give_back`)."""
        self.config = config
        self.governance = governance
        self.store = store
        self.semantic = semantic
        self.limits = limits or {}
        # identical misses share one upstream call (`margin.cache.flight`): on every process on the cache's Redis,
        # or among this process' requests when the entries are in memory or SQLite
        self.flights: Flight | None = None
        if config.coalesce_wait_s > 0:
            wait_s = config.coalesce_wait_s
            self.flights = (
                Flights(store, wait_s)
                if isinstance(store, RedisCache)
                else LocalFlights(store, wait_s, config.coalesce_max_keys, config.coalesce_max_waiters)
            )

    async def __call__(self, request: Request, next: Next) -> Reply:
        if not wanted(request):
            return await next(request)
        target = request.routed().first
        scope = cache_scope(request, self.config.scope)
        model = served_by(target)
        key = request_key(scope, str(request.endpoint), model, request.raw)
        entry = await self.store.get(key)
        if entry is not None:
            return await self._serve(request, target, entry, "exact")
        semantic = None
        if self.semantic is not None and request.endpoint is Endpoint.CHAT and not self.semantic.full:
            where = self.semantic.where(scope, str(request.endpoint), model, request.raw)
            if where is not None:
                hit, vector = await self.semantic.lookup(where)
                semantic = (where, vector)  # the answer is added under the same embedding
                entry = await self.store.get(hit.key) if hit is not None else None
                if hit is not None and entry is not None:
                    if request.principal.is_admin:  # how close a prober came to another caller's question
                        request.record.notices["x-margin-cache-similarity"] = f"{hit.similarity:.4f}"
                    return await self._serve(request, target, entry, "semantic")
        return await self._miss(request, next, target, key, semantic)

    async def _miss(
        self, request: Request, next: Next, target: Target, key: str, semantic: tuple[Where, Any] | None
    ) -> Reply:
        """Upstream, unless another request for the same key is (then its answer, when it comes in time); the
        answer stored, where a hit could replay it."""
        request.record.notices[HEADER] = "miss"
        owner = None
        if self.flights is not None:
            lease = await self.flights.claim(key, self.limits.get(target.backend_name))
            if lease is not None and lease.token is None:  # another is calling upstream for this very request
                given = await give_back(self.governance, request) if self.governance is not None else ()
                entry = await self._wait(request, lease)
                if entry is not None:  # a hit: charged nothing, so it held nothing while it waited
                    return await self._serve(request, target, entry, "exact")
                if given and self.governance is not None:  # upstream itself: reserved again first, or refused
                    await take_back(self.governance, request, given)
            elif lease is not None:  # ours: released early by a stream that shows it will not be stored
                owner = Owner(self.flights, lease, self.config.ttl_s)
                request = request._replace(unstorable=owner.release)
        try:
            reply, fresh = await self._call(request, next)
        except BaseException:
            if owner is not None and not owner.landed:
                await owner.land(None)
            raise
        if owner is not None and not owner.landed:
            await owner.land(fresh)  # stored and released in one round trip
        elif fresh is not None:
            await self.store.put(key, fresh, self.config.ttl_s)
        if fresh is not None and self.semantic is not None and semantic is not None:
            await self.semantic.add(semantic[0], semantic[1], key)
        return reply

    async def _wait(self, request: Request, lease: Lease) -> Entry | None:
        """The entry another request's upstream call stores, waited for in one of the key's waiting places, not
        among its streams (`admission.max_streams_per_key`): the waiters of a burst of identical streams call
        nothing upstream, and held one each, they refused the key's other streams. The waiting places are as many
        as the cap: past them the request is refused (429), so a key holds at most its cap of streams calling
        upstream plus its cap waiting. Answered from the entry, the request replays it in its waiting place;
        going upstream itself (no entry came), it takes a stream place back, or is refused (429) as any stream
        past the cap: the key's upstream calls never pass it."""
        assert self.flights is not None
        slot = request.slot
        if slot is not None:
            try:
                waiting = await slot.wait()
            except BaseException:
                self.flights.leave(lease)
                raise
            if not waiting:
                self.flights.leave(lease)
                raise too_many_streams(slot.cap, waiting=True)
        entry = await self.flights.wait(lease)
        if entry is None and slot is not None and not await slot.retake():
            raise too_many_streams(slot.cap)
        return entry

    @staticmethod
    async def _call(request: Request, next: Next) -> tuple[Reply, Entry | None]:
        """The reply, and the entry to store for it: None when it is not one a hit could replay."""
        reply = await next(request)
        record = request.record
        if record.status not in ("ok", "retried") or record.http_status != 200:
            return reply, None  # a fallback's answer is another model's: not for this key
        fresh = await answer_entry(record, reply)
        if fresh is None or not fresh.text or not await reply.text_only():  # tool calls, reasoning: not replayed
            return reply, None
        return reply, fresh

    async def _serve(self, request: Request, target: Target, entry: Entry, kind: str) -> Reply:
        record = request.record
        call = Call(request.endpoint, request.body, request.raw, target.public, target.public, request.id)
        record.target, record.usage, record.finish_reason = target, entry.usage, entry.finish_reason
        record.stop_sequence = entry.stop_sequence
        record.cache_hit = CacheHit(kind, entry.cost_nanousd, round(time.time() - entry.created_at))
        record.notices[HEADER] = f"hit-{kind}"
        if not request.is_stream:
            payload = ended(payloads.completion(call, entry.text, entry.finish_reason, entry.usage), entry)
            return Reply(completion=Completion(payload=payload, text=entry.text, usage=entry.usage))
        delivery = Delivery(request)
        chunks = replay(call, entry)
        await delivery.run(chunks, await anext(chunks), lambda exc: InvalidRequest(str(exc)))
        return Reply(streamed=True, delivered=delivery.text)
