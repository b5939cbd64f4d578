from __future__ import annotations

import hashlib
from typing import cast

import numpy as np
import numpy.typing as npt


class FakeEncoder:
    """Deterministic unit vectors from a hash of the text; `near[text] = (other, cos)` makes `text` a vector
    with cosine `cos` to `other`'s. Counts calls so tests can check that encodings are reused."""

    def __init__(self, dim: int = 32, near: dict[str, tuple[str, float]] | None = None) -> None:
        self.dim = dim
        self.near = near or {}
        self.calls = 0

    def base(self, text: str) -> npt.NDArray[np.float32]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).normal(size=self.dim)
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        if text not in self.near:
            return self.base(text)
        other, cos = self.near[text]
        anchor = self.base(other)
        noise = self.base(text + "#noise")
        noise -= float(noise @ anchor) * anchor
        noise /= np.linalg.norm(noise)
        # numpy types np.sqrt of a Python float as Any
        return cast(npt.NDArray[np.float32], (cos * anchor + np.sqrt(1 - cos**2) * noise).astype(np.float32))

    def __call__(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        return np.stack([self.vector(t) for t in texts])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
