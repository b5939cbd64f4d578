"""KV methods by name: a key codec and a value codec per layer, and their measured bytes per token.

Names: fp16, bf16, fp8; kivi-{2,4,8}; had-int{3,4}; tq-mse-{1,2,3,4,2.5,3.5}; tq-prod-{2,3,4}.
A `-had` suffix on tq-* uses a randomized Hadamard rotation instead of a random orthogonal one;
a `-gauss` suffix uses the Gaussian-approximation codebook instead of the exact Beta one.
TurboQuant_prod applies the QJL stage to keys only (values are never read through inner products):
tq-prod-b stores keys as (b−1)-bit MSE + 1-bit QJL and values as b-bit MSE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from margin.kv.baselines import FloatCast, HadamardInt, KiviPerChannel, KiviPerToken
from margin.kv.codebook import Codebook, Law, compute_codebook
from margin.kv.codecs import Codec, OutlierSplit, TurboQuantMSE, TurboQuantProd
from margin.kv.rotation import RotationKind

OUTLIER_CHANNELS = 32
DEFAULT_METHODS = (
    "fp16",
    "bf16",
    "fp8",
    "kivi-8",
    "kivi-4",
    "kivi-2",
    "had-int4",
    "had-int3",
    "tq-mse-4",
    "tq-mse-3.5",
    "tq-mse-3",
    "tq-mse-2.5",
    "tq-mse-2",
    "tq-prod-4",
    "tq-prod-3",
    "tq-prod-2",
)
_TQ = re.compile(r"^tq-(mse|prod)-(\d+(?:\.5)?)((?:-had|-gauss)*)$")


@dataclass(frozen=True)
class LayerCodecs:
    key: Codec
    value: Codec


class _Books:
    """Codebooks computed once per method build (Lloyd-Max is the slow part)."""

    def __init__(self, law: Law) -> None:
        self.law = law
        self.books: dict[tuple[int, int], Codebook] = {}

    def get(self, bits: int, dim: int) -> Codebook:
        if (bits, dim) not in self.books:
            self.books[bits, dim] = compute_codebook(bits, dim, self.law)
        return self.books[bits, dim]


@dataclass(frozen=True)
class KVMethod:
    name: str

    @property
    def nominal_bits(self) -> float:
        """Payload bits per stored coordinate, before norms and scales."""
        if self.name in ("fp16", "bf16"):
            return 16.0
        if self.name == "fp8":
            return 8.0
        return float(re.findall(r"\d+(?:\.5)?", self.name)[0])

    def build(self, head_dim: int, num_layers: int, seed: int = 0) -> list[LayerCodecs]:
        """Fresh codecs for each layer (fresh state: the outlier split calibrates on its first input)."""
        match = _TQ.match(self.name)
        books = _Books("gaussian" if match and "-gauss" in match.group(3) else "beta")
        return [self._codecs(head_dim, seed + 1000 * layer, books) for layer in range(num_layers)]

    def _codecs(self, dim: int, seed: int, books: _Books) -> LayerCodecs:
        name = self.name
        if name in ("fp16", "bf16", "fp8"):
            return LayerCodecs(FloatCast(name), FloatCast(name))  # type: ignore[arg-type]
        if m := re.fullmatch(r"kivi-(\d)", name):
            bits = int(m.group(1))
            return LayerCodecs(KiviPerChannel(bits), KiviPerToken(bits, dim=dim))
        if m := re.fullmatch(r"had-int(\d)", name):
            bits = int(m.group(1))
            return LayerCodecs(HadamardInt(bits, dim, seed=seed), HadamardInt(bits, dim, seed=seed + 1))
        if m := _TQ.match(name):
            rotation: RotationKind = "hadamard" if "-had" in m.group(3) else "orthogonal"
            rate = float(m.group(2))
            key = _turbo(m.group(1), rate, dim, books, rotation, seed)
            return LayerCodecs(key, _turbo("mse", rate, dim, books, rotation, seed + 1))
        raise ValueError(f"unknown KV method {name!r}")


def _turbo(kind: str, rate: float, dim: int, books: _Books, rotation: RotationKind, seed: int) -> Codec:
    if rate != int(rate):
        low_bits = int(rate)
        outliers = min(OUTLIER_CHANNELS, dim // 2)
        high = _turbo(kind, low_bits + 1, outliers, books, rotation, seed + 17)
        low = _turbo(kind, low_bits, dim - outliers, books, rotation, seed + 31)
        return OutlierSplit(high, low, outliers, dim)
    bits = int(rate)
    if kind == "mse":
        return TurboQuantMSE(books.get(bits, dim), rotation=rotation, seed=seed)
    book = books.get(bits - 1, dim) if bits > 1 else None
    return TurboQuantProd(bits, dim, book, rotation=rotation, seed=seed)


def get_method(name: str) -> KVMethod:
    ok = (
        name in ("fp16", "bf16", "fp8")
        or re.fullmatch(r"kivi-[2-8]|had-int[2-8]", name) is not None
        or ((m := _TQ.match(name)) is not None and 1 <= float(m.group(2)) <= 8)
    )
    if not ok:
        raise ValueError(f"unknown KV method {name!r}")
    return KVMethod(name)


def measured_bytes_per_token(
    method: KVMethod, *, head_dim: int = 64, num_layers: int = 30, kv_heads: int = 3, tokens: int = 1024
) -> float:
    """Bytes of KV per token, measured from the tensors a cache holds after `tokens` tokens (norms, scales and
    any fp16 tail of an incomplete token group included), summed over layers and KV heads."""
    import torch

    codecs = method.build(head_dim, 1)[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, kv_heads, tokens, head_dim, generator=gen)
    total = 0
    for codec in (codecs.key, codecs.value):
        full = tokens - tokens % codec.token_group
        total += codec.encode(x[..., :full, :]).nbytes if full else 0
        total += (tokens - full) * kv_heads * head_dim * 2  # tail kept in fp16
    return total * num_layers / tokens
