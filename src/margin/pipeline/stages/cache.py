"""cache: answer from the exact cache (and, when enabled, the error-bounded semantic cache) before routing.

A hit replays the stored answer (as JSON or as SSE chunks), costs nothing, releases the budget reservation
and is recorded as a ledger row of kind `cache_hit` with `saved_nanousd` = what producing it cost. Misses are
stored by `cache_fill` once the answer is metered."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from margin.backends import payloads
from margin.backends.base import Call, Chunk, Completion
from margin.cache.exact import CacheStore, Entry, deterministic, request_key
from margin.cache.layer import SemanticLayer
from margin.config import CacheConfig
from margin.errors import InvalidRequest
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.call import MeteredStream
from margin.pipeline.context import RequestContext, Target
from margin.protocol import Endpoint

HEADER = "x-margin-cache"


def cache_scope(ctx: RequestContext, scope: str) -> str:
    """Who shares entries with this caller. Teams and keys are qualified by their org, so two orgs' teams
    named `support` share nothing; the parts are JSON-encoded, so no choice of names makes two scopes equal."""
    principal = ctx.principal
    if scope == "global" or principal is None:
        return "global"
    if scope == "team" and principal.team:
        return orjson.dumps(["team", principal.org, principal.team]).decode()
    return orjson.dumps(["key", principal.org, principal.key_id]).decode()


def wanted(ctx: RequestContext) -> bool:
    mode = ctx.headers.get(HEADER)
    if mode is not None and mode not in ("on", "off"):
        raise InvalidRequest(f"{HEADER} must be `on` or `off`, not {mode!r}", param=HEADER)
    if mode == "off" or ctx.endpoint is Endpoint.EMBEDDINGS:
        return False
    return mode == "on" or deterministic(ctx.raw)


async def replay(call: Call, entry: Entry) -> AsyncIterator[Chunk]:
    yield Chunk(payload=payloads.chunk(call, entry.text, first=True), text=entry.text)
    yield Chunk(payload=payloads.chunk(call, "", entry.finish_reason))
    yield Chunk(payload=payloads.usage_chunk(call, entry.usage), usage=entry.usage)


class CacheStage(BaseStage):
    name = "cache"

    def __init__(self, config: CacheConfig, store: CacheStore, semantic: SemanticLayer | None = None) -> None:
        self.config = config
        self.store = store
        self.semantic = semantic

    async def on_request(self, ctx: RequestContext) -> None:
        if not wanted(ctx) or not ctx.candidates:
            return
        target = ctx.candidates[0]
        scope = cache_scope(ctx, self.config.scope)
        key = request_key(scope, str(ctx.endpoint), target.public, ctx.raw)
        ctx.cache_key = key
        entry = await self.store.get(key)
        if entry is not None:
            await self._serve(ctx, target, entry, "exact")
            return
        if self.semantic is not None and ctx.endpoint is Endpoint.CHAT:
            entry = await self._semantic(ctx, scope, target)
            if entry is not None:
                await self._serve(ctx, target, entry, "semantic")
                return
        ctx.notices[HEADER] = "miss"

    async def _semantic(self, ctx: RequestContext, scope: str, target: Target) -> Entry | None:
        assert self.semantic is not None
        where = self.semantic.where(scope, str(ctx.endpoint), target.public, ctx.raw)
        if where is None:
            return None
        hit, vector = await self.semantic.lookup(where)
        ctx.semantic = (where, vector)  # cache_fill adds this request's answer under the same embedding
        if hit is None:
            return None
        entry = await self.store.get(hit.key)
        if entry is not None and ctx.principal is not None and ctx.principal.is_admin:
            # the similarity tells a prober how close it came to another caller's question: admins only
            ctx.notices["x-margin-cache-similarity"] = f"{hit.similarity:.4f}"
        return entry

    async def _serve(self, ctx: RequestContext, target: Target, entry: Entry, kind: str) -> None:
        call = Call(ctx.endpoint, ctx.request, ctx.raw, target.public, target.public, ctx.request_id)
        call.stats.usage, call.stats.finish_reason = entry.usage, entry.finish_reason
        ctx.call, ctx.target = call, target
        ctx.cache_hit = {
            "type": kind,
            "saved_nanousd": entry.cost_nanousd,
            "age_s": round(time.time() - entry.created_at),
        }
        ctx.notices[HEADER] = f"hit-{kind}"
        if ctx.is_stream:
            stream = MeteredStream(ctx, replay(call, entry), lambda: None)
            await stream.prime()
            ctx.stream = stream
        else:
            payload = payloads.completion(call, entry.text, entry.finish_reason, entry.usage)
            ctx.completion = Completion(payload=payload, text=entry.text)


def build(services: Any) -> CacheStage | None:
    config: CacheConfig = services.settings.cache
    return CacheStage(config, services.cache, services.semantic) if config.enabled else None


STAGE = StageSpec("cache", 400, build)
