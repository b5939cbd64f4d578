"""Vector stores for one cache bucket (scope + context hash). Small buckets search exactly with numpy (an
HNSW index reserves ~16 MB even when empty); a bucket that grows past `ANN_MIN` entries moves to a
usearch HNSW index. Vectors are L2-normalised float32, so similarity is the inner product (cosine)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
ANN_MIN = 2048


class Bucket(Protocol):
    def add(self, entry_id: int, vector: Vector) -> None: ...
    def remove(self, entry_id: int) -> None: ...
    def search(self, vector: Vector, k: int) -> list[tuple[int, float]]: ...
    def __len__(self) -> int: ...


class ExactBucket:
    """Rows in a growable matrix; removal swaps the last row into the hole, so search is one mat-vec."""

    def __init__(self, dim: int, capacity: int = 16) -> None:
        self.dim = dim
        self._matrix: Vector = np.zeros((capacity, dim), dtype=np.float32)
        self._ids: list[int] = []
        self._rows: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, entry_id: int, vector: Vector) -> None:
        if entry_id in self._rows:
            self._matrix[self._rows[entry_id]] = vector
            return
        row = len(self._ids)
        if row == self._matrix.shape[0]:
            grown = np.zeros((row * 2, self.dim), dtype=np.float32)
            grown[:row] = self._matrix
            self._matrix = grown
        self._matrix[row] = vector
        self._ids.append(entry_id)
        self._rows[entry_id] = row

    def remove(self, entry_id: int) -> None:
        row = self._rows.pop(entry_id, None)
        if row is None:
            return
        last = len(self._ids) - 1
        if row != last:
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._rows[moved] = row
        self._ids.pop()

    def search(self, vector: Vector, k: int) -> list[tuple[int, float]]:
        count = len(self._ids)
        if count == 0:
            return []
        # einsum, not `@`: BLAS would spread this small mat-vec over threads, and on a busy machine each
        # call then waits a scheduler slice (measured: 24 ms median vs 0.2 ms for 2,048 rows).
        scores = np.einsum("ij,j->i", self._matrix[:count], vector)
        k = min(k, count)
        top = np.argpartition(-scores, k - 1)[:k] if k < count else np.arange(count)
        top = top[np.argsort(-scores[top])]
        return [(self._ids[i], float(scores[i])) for i in top]

    def items(self) -> tuple[list[int], Vector]:
        return list(self._ids), self._matrix[: len(self._ids)].copy()


class AnnBucket:
    """usearch HNSW over inner product. `search` asks for `k` neighbours; removed keys are dropped by usearch."""

    def __init__(self, dim: int, *, connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 64):
        from usearch.index import Index

        self.dim = dim
        self._index: Any = Index(
            ndim=dim,
            metric="ip",
            dtype="f32",
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )

    @classmethod
    def from_items(cls, dim: int, ids: list[int], vectors: Vector) -> AnnBucket:
        bucket = cls(dim)
        if ids:
            bucket._index.add(np.asarray(ids, dtype=np.uint64), vectors, threads=1)
        return bucket

    def __len__(self) -> int:
        return len(self._index)

    def add(self, entry_id: int, vector: Vector) -> None:
        if self._index.contains(entry_id):
            self._index.remove(entry_id)
        self._index.add(entry_id, vector, threads=1)

    def remove(self, entry_id: int) -> None:
        if self._index.contains(entry_id):
            self._index.remove(entry_id)

    def search(self, vector: Vector, k: int) -> list[tuple[int, float]]:
        if len(self._index) == 0:
            return []
        matches = self._index.search(vector, k, threads=1)
        return [(int(key), 1.0 - float(dist)) for key, dist in zip(matches.keys, matches.distances, strict=True)]

    def search_exact(self, vector: Vector, k: int) -> list[tuple[int, float]]:
        matches = self._index.search(vector, k, threads=1, exact=True)
        return [(int(key), 1.0 - float(dist)) for key, dist in zip(matches.keys, matches.distances, strict=True)]
