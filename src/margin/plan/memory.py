"""Where the memory goes: parameters by part, weight bytes by format, KV bytes per token by KV format, and the
per-device peak (weights + KV cache + activations) with the largest batch and context that fit.

KV bytes/token = 2 (K and V) × layers × kv_heads × bytes per stored head vector; for fp16 that is
2 × L × kv_heads × head_dim × 2 (SmolLM2-135M: 2 × 30 × 3 × 64 × 2 = 23,040 B)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from margin.plan.catalog import Catalog, Engine, Hardware, KvFormat, Model, WeightFormat

GB = 1e9
ACT_BYTES = 2  # activations in 16-bit
LOGIT_BYTES = 4  # logits in fp32
K_QUANT_BLOCK = 256
# llama.cpp's fallback when a k-quant's rows are not a multiple of 256 (llama_tensor_get_type)
GGUF_FALLBACK = {
    "gguf-q2_k": "gguf-q4_0",
    "gguf-q3_k": "gguf-q4_0",
    "gguf-q4_k": "gguf-q5_0",
    "gguf-q5_k": "gguf-q5_1",
    "gguf-q6_k": "gguf-q8_0",
}


@dataclass(frozen=True, slots=True)
class Params:
    """Parameter counts by part (per model, not per device)."""

    embedding: int  # input token embedding (also the LM head when tied)
    lm_head: int  # a separate output matrix (0 when tied)
    attention: int  # all layers
    mlp_dense: int  # all layers (0 for MoE)
    expert_each: int  # one expert of one layer (0 for dense)
    experts_per_layer: int
    experts_active: int
    moe_layers: int
    router: int  # all layers
    norms: int = 0  # RMSNorm weights (two per layer and a final one): stored, not multiplied

    @property
    def experts_total(self) -> int:
        return self.expert_each * self.experts_per_layer * self.moe_layers

    @property
    def total(self) -> int:
        layers = self.attention + self.mlp_dense + self.experts_total + self.router
        return self.embedding + self.lm_head + layers + self.norms

    @property
    def head(self) -> int:
        """The matrix that computes logits (the tied embedding, or the separate LM head)."""
        return self.lm_head or self.embedding

    @property
    def body_active(self) -> int:
        """Matmul parameters one token uses in the layers (attention, MLP or its active experts, router)."""
        return self.attention + self.mlp_dense + self.expert_each * self.experts_active * self.moe_layers + self.router

    @property
    def active(self) -> int:
        return self.body_active + self.embedding + self.lm_head + self.norms


def params(model: Model) -> Params:
    d, h, kv, dh, layers = model.hidden, model.heads, model.kv_heads, model.head_dim, model.layers
    attention = layers * (d * h * dh + 2 * d * kv * dh + h * dh * d)
    embedding = model.vocab * d
    lm_head = 0 if model.tied_embeddings else model.vocab * d
    norms = (2 * layers + 1) * d
    if model.moe is None:
        return Params(embedding, lm_head, attention, layers * 3 * d * model.intermediate, 0, 0, 0, 0, 0, norms)
    moe = model.moe
    expert = 3 * d * moe.expert_intermediate
    router = layers * d * moe.experts
    return Params(embedding, lm_head, attention, 0, expert, moe.experts, moe.active, layers, router, norms)


def resolve_weights(catalog: Catalog, model: Model, key: str) -> tuple[WeightFormat, WeightFormat]:
    """(format of the layers, format of the embedding / LM head), after llama.cpp's k-quant fallbacks."""
    body_key = key
    if model.hidden % K_QUANT_BLOCK and key in GGUF_FALLBACK:
        body_key = GGUF_FALLBACK[key]
    body = catalog.get_weights(body_key)
    head_key = catalog.get_weights(key).embedding or body_key
    if model.hidden % K_QUANT_BLOCK and head_key in GGUF_FALLBACK:
        head_key = GGUF_FALLBACK[head_key]
    return body, catalog.get_weights(head_key)


@dataclass(frozen=True, slots=True)
class WeightBytes:
    body: float  # layers (attention, MLP / all experts, router)
    expert_each: float  # one expert of one layer (0 for dense)
    embedding: float
    lm_head: float

    @property
    def total(self) -> float:
        return self.body + self.embedding + self.lm_head

    @property
    def head(self) -> float:
        return self.lm_head or self.embedding


def weight_bytes(catalog: Catalog, model: Model, key: str) -> WeightBytes:
    body, head = resolve_weights(catalog, model, key)
    p = params(model)
    layers = p.attention + p.mlp_dense + p.experts_total + p.router
    return WeightBytes(
        layers * body.bits / 8 + p.norms * body.norm_bits / 8,
        p.expert_each * body.bits / 8,
        p.embedding * head.bits / 8,
        p.lm_head * head.bits / 8,
    )


def kv_vector_bytes(kv: KvFormat, head_dim: int) -> float:
    """Bytes of one stored K (or V) vector of one head."""
    bits = kv.bits + kv.overhead_bits_per_coordinate
    return bits * head_dim / 8 + kv.overhead_bytes_per_vector


def kv_bytes_per_token(model: Model, kv: KvFormat) -> float:
    return 2 * model.layers * model.kv_heads * kv_vector_bytes(kv, model.head_dim)


def kv_share(model: Model, devices: int) -> float:
    """Share of the KV cache one device holds under tensor parallelism (KV heads split, replicated past their
    count)."""
    return math.ceil(model.kv_heads / devices) / model.kv_heads


def activation_bytes(model: Model, tokens: int, sequences: int) -> float:
    """Working memory of one step: hidden/FFN tensors of `tokens` tokens plus the logits of `sequences` (reserved
    for the engine's largest step, whatever the batch, as engines do)."""
    ff = model.intermediate if model.moe is None else model.moe.active * model.moe.expert_intermediate
    return tokens * (4 * model.hidden + 3 * ff) * ACT_BYTES + sequences * model.vocab * LOGIT_BYTES


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Bytes per device for `batch` sequences of `context` tokens."""

    devices: int
    batch: int
    context: int
    capacity: float  # usable bytes per device (memory × the engine's memory fraction)
    weights: float
    kv_cache: float
    activations: float
    kv_bytes_per_token: float  # whole model, before the tensor-parallel split
    max_batch: int  # at this context, per the memory (and the engine's cap)
    max_context: int  # at batch 1
    limit: str  # what caps max_batch: "memory" or "engine"

    @property
    def peak(self) -> float:
        return self.weights + self.kv_cache + self.activations

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity and self.max_batch >= 1

    def to_json(self) -> dict[str, float | int | str | bool]:
        return {
            "devices": self.devices,
            "batch": self.batch,
            "context": self.context,
            "capacity_gb_per_device": round(self.capacity / GB, 3),
            "weights_gb_per_device": round(self.weights / GB, 3),
            "kv_cache_gb_per_device": round(self.kv_cache / GB, 3),
            "activations_gb_per_device": round(self.activations / GB, 3),
            "peak_gb_per_device": round(self.peak / GB, 3),
            "kv_bytes_per_token": round(self.kv_bytes_per_token, 1),
            "max_batch": self.max_batch,
            "max_batch_limit": self.limit,
            "max_context": self.max_context,
            "fits": self.fits,
        }


def plan_memory(
    catalog: Catalog,
    model: Model,
    hw: Hardware,
    weights: str,
    kv: str,
    devices: int,
    engine: Engine,
    batch: int,
    context: int,
) -> MemoryPlan:
    capacity = hw.memory_gb * GB * engine.memory_fraction
    w = weight_bytes(catalog, model, weights).total / devices
    kv_tok = kv_bytes_per_token(model, catalog.get_kv(kv))
    kv_dev_tok = kv_tok * kv_share(model, devices)
    act = activation_bytes(model, engine.max_tokens_per_step, engine.max_batch) / devices  # the engine's workspace
    free = capacity - w - act
    by_memory = max(0, math.floor(free / (kv_dev_tok * context))) if context > 0 else engine.max_batch
    max_batch = min(by_memory, engine.max_batch)
    max_context = max(0, min(model.context, math.floor(free / kv_dev_tok)))
    return MemoryPlan(
        devices,
        batch,
        context,
        capacity,
        w,
        kv_dev_tok * batch * context,
        act,
        kv_tok,
        max_batch,
        max_context,
        "engine" if by_memory > engine.max_batch else "memory",
    )
