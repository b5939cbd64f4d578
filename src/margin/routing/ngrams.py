"""Hashed word uni/bigram features (tf-idf, L2-normalised) in pure Python + numpy: stable across processes
(crc32, not Python's salted hash), no vocabulary to ship, microseconds per prompt."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
MAX_CHARS = 4000
_TOKEN = re.compile(r"[a-z]+|\d|[^\sa-z\d]")


def hashed_counts(text: str, dim: int) -> dict[int, int]:
    """Bucket → count for the lower-cased word/digit/symbol unigrams and bigrams of `text[:MAX_CHARS]`."""
    tokens = _TOKEN.findall(text[:MAX_CHARS].lower())
    mask = dim - 1
    counts: dict[int, int] = {}
    previous = "\x02"
    for token in tokens:
        for key in (token, previous + "\x00" + token):
            bucket = zlib.crc32(key.encode("utf-8")) & mask
            counts[bucket] = counts.get(bucket, 0) + 1
        previous = token
    return counts


def count_matrix(prompts: Sequence[str], dim: int) -> Any:
    """Raw hashed counts as a scipy CSR matrix (one row per prompt); computed once per dataset in evaluations."""
    from scipy import sparse  # type: ignore[import-untyped]

    indptr: list[int] = [0]
    indices: list[int] = []
    values: list[int] = []
    for text in prompts:
        counts = hashed_counts(text, dim)
        indices.extend(counts)
        values.extend(counts.values())
        indptr.append(len(indices))
    return sparse.csr_matrix((values, indices, indptr), shape=(len(prompts), dim), dtype=np.float64)


def idf_weights(counts: Any) -> FloatArray:
    """Smoothed inverse document frequency per bucket from a count matrix: log((1 + n) / (1 + df)) + 1."""
    df = np.asarray((counts > 0).sum(axis=0), dtype=np.float64).ravel()
    return np.asarray(np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0, dtype=np.float64)


def tfidf(counts: Any, idf: FloatArray) -> Any:
    """Sublinear tf (1 + log tf) times idf, rows L2-normalised: the training/evaluation twin of `row`."""
    from scipy import sparse

    weighted = counts.tocsr(copy=True)
    weighted.data = 1.0 + np.log(weighted.data)
    weighted = weighted @ sparse.diags(idf)
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    return sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ weighted


def row(text: str, idf: FloatArray) -> tuple[list[int], list[float]]:
    """Sparse tf-idf row (sublinear tf) for one prompt, L2-normalised: (indices, values)."""
    counts = hashed_counts(text, idf.size)
    indices = sorted(counts)
    values = [(1.0 + math.log(counts[i])) * float(idf[i]) for i in indices]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return indices, [v / norm for v in values]


def dot(text: str, idf: FloatArray, weights: FloatArray) -> float:
    """`row(text) · weights` without building a matrix (the scoring path)."""
    cols, vals = row(text, idf)
    return float(np.dot(weights[cols], vals)) if cols else 0.0
