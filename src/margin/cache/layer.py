"""The semantic cache as the gateway uses it: what decides a hit (tenant + model + the conversation before
the last user turn, hashed; and the last user turn, embedded, holding the same names, ids and numbers), a
calibrated threshold for the operator's δ, a per-tenant entry quota, and one worker thread for encoding and
index work so the event loop never embeds.

A last user turn longer than `MAX_TEXT_CHARS` is not looked up: the encoder reads only its first 256 word
pieces, so two long questions that differ after that would look identical."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from margin.cache.exact import request_key
from margin.cache.identifiers import Identifiers
from margin.config import CacheConfig

MAX_TEXT_CHARS = 1000
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
    def __init__(self, config: CacheConfig, encoder: Any = None) -> None:
        from margin.cache.calibration import load_calibration, threshold_for
        from margin.cache.encoder import default_encoder
        from margin.cache.semantic import SemanticCache

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

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

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
        vector = await self._run(self.cache.encode, text)
        hit = await self._run(self.cache.lookup_vector, scope, context, vector, Identifiers.of(text))
        return hit, vector

    async def add(self, where: Where, vector: Any, key: str) -> None:
        tenant, scope, context, text = where
        identifiers = Identifiers.of(text)
        await self._run(
            lambda: self.cache.add_vector(scope, context, vector, key, tenant=tenant, identifiers=identifiers)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
