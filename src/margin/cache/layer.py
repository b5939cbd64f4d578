"""The semantic cache as the gateway uses it: what decides a hit (tenant + model + the conversation before
the last user turn, hashed; and the last user turn, embedded), a calibrated threshold for the operator's δ,
and one worker thread for encoding and index work so the event loop never embeds."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from margin.cache.exact import request_key
from margin.config import CacheConfig


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
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="margin-semantic")

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    @staticmethod
    def where(scope: str, endpoint: str, model: str, raw: dict[str, Any]) -> tuple[str, str, str] | None:
        """(bucket scope, context hash, text) for a chat request, or None when it cannot be looked up."""
        split = split_last_user_turn(raw)
        if split is None:
            return None
        rest, text = split
        return f"{scope}|{model}", request_key(scope, endpoint, model, rest), text

    async def lookup(self, where: tuple[str, str, str]) -> tuple[Any, Any]:
        """(hit or None, the embedding, kept to add the answer later without encoding twice)."""
        scope, context, text = where
        vector = await self._run(self.cache.encode, text)
        hit = await self._run(self.cache.lookup_vector, scope, context, vector)
        return hit, vector

    async def add(self, where: tuple[str, str, str], vector: Any, key: str) -> None:
        scope, context, _ = where
        await self._run(self.cache.add_vector, scope, context, vector, key)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
