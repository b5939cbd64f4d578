"""The semantic cache as the gateway uses it: what decides a hit (tenant + model + the conversation before
the last user turn, hashed; and the last user turn, embedded, holding the same names, ids and numbers), a
calibrated threshold for the operator's δ, a per-tenant entry quota, and one worker thread for encoding and
index work so the event loop never embeds.

A last user turn longer than `MAX_TEXT_CHARS` is not looked up: the encoder reads only its first 256 word
pieces, so two long questions that differ after that would look identical.

With a Redis (`redis`: the exact cache's client), additions are shared with every other process on it
(`margin.cache.shared`): each still looks up in its own index, and adds what the others stored."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from margin.cache.exact import request_key
from margin.cache.identifiers import Identifiers
from margin.cache_config import CacheConfig

if TYPE_CHECKING:
    from margin.cache.shared import SemanticFeed, Shared

MAX_TEXT_CHARS = 1000
BACKFILL_WAIT_S = 3.0
Where = tuple[str, str, str, str]  # (tenant, bucket scope, context hash, text)


def split_last_user_turn(raw: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """(the request without its last user turn's text, that text); None when there is no text user turn."""
    messages = raw.get("messages")
    if not isinstance(messages, list):
        return None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
            rest = [*messages[:index], {**message, "content": ""}, *messages[index + 1 :]]
            return {**raw, "messages": rest}, message["content"]
    return None


class SemanticLayer:
    def __init__(self, config: CacheConfig, encoder: Any = None, redis: Any = None) -> None:
        from margin.cache.calibration import load_calibration, threshold_for
        from margin.cache.encoder import default_encoder
        from margin.cache.semantic import SemanticCache
        from margin.cache.shared import ENTRY_BYTES, SemanticFeed

        semantic = config.semantic
        self.threshold = threshold_for(semantic.delta, load_calibration())
        self.cache = SemanticCache(
            encoder or default_encoder(threads=1),
            threshold=self.threshold,
            max_entries=semantic.max_entries,
            ttl_s=config.ttl_s,
            max_entries_per_tenant=semantic.max_entries_per_tenant,
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="margin-semantic")
        self.max_queued = semantic.max_queued_lookups
        self._queued = 0  # lookups waiting for the thread or on it
        self.ttl_s = config.ttl_s
        # the stream holds what a process starting later back-fills: at most max_entries, and about a quarter of
        # cache.max_bytes (the embedded Redis of `--workers N` holds the exact entries in that bound too)
        maxlen = min(semantic.max_entries, max(1000, config.max_bytes // 4 // ENTRY_BYTES))
        self.feed: SemanticFeed | None = None
        if redis is not None:
            self.feed = SemanticFeed(redis, dim=self.cache.dim, maxlen=maxlen)

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    @property
    def full(self) -> bool:
        """`max_queued` lookups wait for the encoder's one thread (or are on it): a request does not look up then,
        it goes on as a miss (a burst of lookups made every chat wait behind it: 300 at once held another
        caller's request 32 s)."""
        return self._queued >= self.max_queued

    @staticmethod
    def where(scope: str, endpoint: str, model: str, raw: dict[str, Any]) -> Where | None:
        """(tenant, bucket scope, context hash, text) for a chat request, or None when it cannot be looked up
        (no text user turn, or one too long for the encoder to compare)."""
        split = split_last_user_turn(raw)
        if split is None or len(split[1]) > MAX_TEXT_CHARS:
            return None
        rest, text = split
        return scope, f"{scope}|{model}", request_key(scope, endpoint, model, rest), text

    async def lookup(self, where: Where) -> tuple[Any, Any]:
        """(hit or None, the embedding, kept to add the answer later without encoding twice)."""
        _, scope, context, text = where
        self._queued += 1
        try:
            vector = await self._run(self.cache.encode, text)
            hit = await self._run(self.cache.lookup_vector, scope, context, vector, Identifiers.of(text))
        finally:
            self._queued -= 1
        return hit, vector

    async def add(self, where: Where, vector: Any, key: str) -> None:
        tenant, scope, context, text = where
        identifiers = Identifiers.of(text)
        # the exact-cache key stands for the text (it hashes the whole request): the same answer stored again,
        # here or by another process, replaces its entry instead of adding a second one
        await self._run(
            lambda: self.cache.add_vector(
                scope, context, vector, key, text_digest=key, tenant=tenant, identifiers=identifiers
            )
        )
        if self.feed is not None:
            from margin.cache.shared import Shared

            expires_at = time.time() + self.ttl_s
            self.feed.publish(Shared(tenant, scope, context, key, identifiers, expires_at, vector))

    async def start(self) -> None:
        """Share additions with the other processes on the Redis, if there is one; returns once what the others
        stored is in this index (the back-fill), or after `BACKFILL_WAIT_S`."""
        if self.feed is not None:
            self.feed.start(self._take)
            await self.feed.ready(BACKFILL_WAIT_S)

    async def _take(self, batch: list[Shared]) -> None:
        await self._run(self._add_shared, batch)

    def _add_shared(self, batch: list[Shared]) -> None:
        """Another process's entries, with what is left of their life, under the same scope, context and
        tenant (so its quota) as where they were stored."""
        now = time.time()
        for entry in batch:
            if entry.expires_at - now > 0:
                self.cache.add_vector(
                    entry.scope,
                    entry.context,
                    entry.vector,
                    entry.key,
                    text_digest=entry.key,
                    tenant=entry.tenant,
                    identifiers=entry.identifiers,
                    ttl_s=entry.expires_at - now,
                )

    async def stop(self) -> None:
        if self.feed is not None:
            await self.feed.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
