"""A scripted backend for tests and benchmarks: configured TTFT, pace, token count, usage and errors.

Its "tokenizer" is whitespace: every word is one token, so token counts in tests are exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from margin.backend_config import FakeBackendConfig
from margin.backends import payloads
from margin.errors import BackendClientError, BackendError, BackendTimeout, MarginError
from margin.protocol import EmbeddingRequest
from margin.types import Call, Chunk, Completion, Usage


class FakeBackend:
    def __init__(self, name: str, config: FakeBackendConfig, services: Any = None) -> None:
        self.name = name
        self.config = config
        self.calls = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def count_tokens(self, text: str) -> int | None:
        return len(text.split())

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "kind": "fake", "calls": self.calls}

    def _fail(self) -> MarginError:
        status = self.config.fail_status or 502
        if status == 504:
            return BackendTimeout(f"backend {self.name} timed out (scripted)")
        if 400 <= status < 500:
            return BackendClientError(f"backend {self.name} rejected the request (scripted)", upstream_status=status)
        return BackendError(f"backend {self.name} failed with {status} (scripted)")

    def _plan(self, call: Call) -> tuple[int, Usage]:
        """Tokens of each answer, and the usage of all of them: `n` answers a prompt (`best_of` generated)."""
        limit = getattr(call.request, "output_limit", None)
        n = self.config.output_tokens if limit is None else min(limit, self.config.output_tokens)
        prompt_words = payloads.prompt_text(call).split()
        if self.config.echo:
            n = min(n, len(prompt_words))
        answers = getattr(call.request, "choices", 1) * getattr(call.request, "prompts", 1)
        # a prompt of token ids is tokens already (its text is empty: it counted 0)
        prompt_tokens = len(prompt_words) + payloads.token_id_count(call.request)
        return n, Usage(input_tokens=prompt_tokens, output_tokens=n * answers)

    @staticmethod
    def _copies(call: Call) -> int:
        """The choices an answer holds: `n` per prompt, as OpenAI returns them."""
        return int(getattr(call.request, "n", 1)) * getattr(call.request, "prompts", 1)

    def _words(self, call: Call, n: int) -> list[str]:
        """The output: `word` n times, or the prompt's first n words when echoing."""
        if self.config.echo:
            return [w + " " for w in payloads.prompt_text(call).split()[:n]]
        return [self.config.word + " "] * n

    async def _pace(self, index: int) -> None:
        if index == 0 and self.config.ttft_ms:
            await asyncio.sleep(self.config.ttft_ms / 1000)
        elif index > 0 and self.config.tokens_per_s:
            await asyncio.sleep(1 / self.config.tokens_per_s)

    async def complete(self, call: Call) -> Completion:
        self.calls += 1
        started = time.perf_counter()
        if self.config.fail_status:
            raise self._fail()
        n, usage = self._plan(call)
        await self._pace(0)
        if self.config.tokens_per_s and n > 1:
            await asyncio.sleep((n - 1) / self.config.tokens_per_s)
        text = "".join(self._words(call, n))
        call.stats.busy_s = time.perf_counter() - started
        call.stats.finish_reason = "length" if n < self.config.output_tokens else "stop"
        payload = payloads.completion(call, text, call.stats.finish_reason, usage, copies=self._copies(call))
        if not self.config.report_usage:
            payload.pop("usage")
        return Completion(payload=payload, text=text, usage=usage if self.config.report_usage else None)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        self.calls += 1
        started = time.perf_counter()
        if self.config.fail_status:
            raise self._fail()
        n, usage = self._plan(call)
        cut = self.config.fail_after_tokens
        finish = "length" if n < self.config.output_tokens else "stop"
        for index in range(self._copies(call)):  # one choice after the other, each with its index
            for i, word in enumerate(self._words(call, n)):
                await self._pace(i)
                if cut is not None and i >= cut:
                    raise BackendError(f"backend {self.name} cut the stream after {cut} tokens (scripted)")
                yield Chunk(payload=payloads.chunk(call, word, first=i == 0, index=index), text=word)
            yield Chunk(payload=payloads.chunk(call, "", finish, index=index))
        call.stats.finish_reason = finish
        call.stats.busy_s = time.perf_counter() - started
        if self.config.report_usage:
            yield Chunk(payload=payloads.usage_chunk(call, usage), usage=usage)

    async def embed(self, call: Call) -> Completion:
        self.calls += 1
        if self.config.fail_status:
            raise self._fail()
        assert isinstance(call.request, EmbeddingRequest)
        texts = call.request.texts()
        payloads.fixed_dimensions(call, self.config.embedding_dim)  # it answered 8 numbers for `dimensions: 2`
        vectors = [_pseudo_vector(t, self.config.embedding_dim) for t in texts]
        tokens = sum(len(t.split()) for t in texts)
        payload = payloads.embeddings(call, vectors, tokens, call.request.encoding_format)
        return Completion(payload=payload, usage=Usage(input_tokens=tokens))


def _pseudo_vector(text: str, dim: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
