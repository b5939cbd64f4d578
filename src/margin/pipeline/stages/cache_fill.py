"""cache_fill: store a successful, metered answer under the key `cache` computed for it.

It runs after `meter` so the entry knows what the answer cost (every later hit saved that much). The stored
text is the backend's own (before any PII restore for the caller), so an entry never carries one caller's
data into another's answer."""

from __future__ import annotations

import time
from typing import Any

from margin.cache.exact import CacheStore, Entry
from margin.cache.layer import SemanticLayer
from margin.config import CacheConfig
from margin.economics.money import to_nanousd
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import RequestContext


def answer_entry(ctx: RequestContext) -> Entry | None:
    call, usage, target = ctx.call, ctx.usage, ctx.target
    if call is None or usage is None or target is None:
        return None
    text = "".join(ctx.delivered_text) if ctx.stream is not None else (ctx.completion.text if ctx.completion else "")
    cost = ctx.charge.cost_usd if ctx.charge is not None else None
    return Entry(
        text=text,
        finish_reason=call.stats.finish_reason or "stop",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_nanousd=None if cost is None else to_nanousd(cost),
        model=target.public,
        created_at=time.time(),
    )


class CacheFillStage(BaseStage):
    name = "cache_fill"

    def __init__(self, config: CacheConfig, store: CacheStore, semantic: SemanticLayer | None = None) -> None:
        self.config = config
        self.store = store
        self.semantic = semantic

    async def on_response(self, ctx: RequestContext) -> None:
        if ctx.cache_key is None or ctx.cache_hit is not None or ctx.http_status != 200:
            return
        if ctx.status not in ("ok", "retried"):  # a fallback's answer is another model's: not for this key
            return
        entry = answer_entry(ctx)
        if entry is None or not entry.text:
            return
        await self.store.put(ctx.cache_key, entry, self.config.ttl_s)
        if self.semantic is not None and ctx.semantic is not None:
            where, vector = ctx.semantic
            await self.semantic.add(where, vector, ctx.cache_key)


def build(services: Any) -> CacheFillStage | None:
    config: CacheConfig = services.settings.cache
    return CacheFillStage(config, services.cache, services.semantic) if config.enabled else None


STAGE = StageSpec("cache_fill", 850, build)
