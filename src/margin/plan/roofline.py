"""Roofline per step: FLOPs and bytes moved for a prefill chunk or a decode step, and the time they take on
`devices` tensor-parallel devices.

    time = max(matmul FLOPs / (peak[weights' math] × c) + attention FLOPs / (peak[attention math] × c),
               bytes / (bandwidth × memory))
           + collectives (2 all-reduces per layer, ring: 2 (t-1)/t × payload / (link × interconnect) + latency)
           + the engine's fixed step overhead
    (c = the class's `compute` efficiency; where a class sets them, `compute_decode` for decode steps (a CPU's
    matrix-vector kernels reach a smaller fraction of peak than its matrix-matrix ones) and `compute_untiled` for CPU
    prefill of formats llama.cpp has no tiled kernel for)

Bytes are what one step moves through memory: the weights it touches (MoE: the experts its tokens route to, in
expectation), the KV cache it reads and writes, and its activations. The bound is the largest term."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from margin.plan.catalog import DType, EfficiencyClass, Hardware, KvFormat, Model
from margin.plan.memory import ACT_BYTES, WeightBytes, kv_bytes_per_token, params

# math a dtype falls back to when the hardware lacks it
FALLBACK: dict[DType, tuple[DType, ...]] = {
    "fp4": ("fp4", "fp8", "bf16", "fp16", "fp32"),
    "fp8": ("fp8", "bf16", "fp16", "fp32"),
    "int8": ("int8", "fp16", "bf16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "fp32": ("fp32",),
}
Kernel = Literal["gemm", "gemv", "untiled"]
ACT_ELEMS_PER_LAYER = (6, 3)  # activation elements read+written per token per layer: (× hidden, × FFN width)


def peak_flops(hw: Hardware, dtype: DType) -> tuple[float, DType]:
    """Peak FLOP/s for `dtype` (or the dtype it falls back to) and the dtype used."""
    for candidate in FALLBACK[dtype]:
        if candidate in hw.peak_tflops:
            return hw.peak_tflops[candidate] * 1e12, candidate
    raise ValueError(f"{hw.name} lists no peak for {dtype} or its fallbacks")


def attention_dtype(kv: KvFormat) -> DType:
    """Attention math: fp8 with a plain 8-bit KV cache (on hardware that has fp8), else 16-bit."""
    plain = kv.overhead_bytes_per_vector == 0 and kv.overhead_bits_per_coordinate == 0
    return "fp8" if plain and kv.bits == 8 else "fp16"


@dataclass(frozen=True, slots=True)
class Work:
    matmul_flops: float
    attention_flops: float
    weight_bytes: float
    kv_bytes: float
    activation_bytes: float
    collectives: int  # all-reduces (tensor parallel)
    collective_payload: float  # bytes per all-reduce
    kernel: Kernel = "gemm"  # which efficiency applies: gemm (prefill), gemv (decode), untiled (CPU prefill)

    @property
    def flops(self) -> float:
        return self.matmul_flops + self.attention_flops

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes


def _touched_experts(experts: int, active: int, tokens: int) -> float:
    """Expected distinct experts per layer that `tokens` tokens route to (uniform routing)."""
    return experts * (1 - (1 - active / experts) ** tokens)


def _weights_touched(model: Model, wb: WeightBytes, tokens: int) -> float:
    if model.moe is None:
        return wb.body + wb.head
    p = params(model)
    touched = _touched_experts(model.moe.experts, model.moe.active, tokens)
    unused = (p.experts_per_layer - touched) * wb.expert_each * p.moe_layers
    return wb.body - unused + wb.head


def _activations(model: Model, tokens: int) -> float:
    ff = model.intermediate if model.moe is None else model.moe.active * model.moe.expert_intermediate
    per_layer = ACT_ELEMS_PER_LAYER[0] * model.hidden + ACT_ELEMS_PER_LAYER[1] * ff
    return tokens * model.layers * per_layer * ACT_BYTES


def _attention_flops(model: Model, new_tokens: int, prior: int) -> float:
    """QKᵀ and AV for `new_tokens` causal tokens after `prior` cached ones: 4 × L × heads × head_dim per pair."""
    pairs = new_tokens * prior + new_tokens * (new_tokens + 1) / 2
    return 4 * model.layers * model.heads * model.head_dim * pairs


def decode_work(model: Model, wb: WeightBytes, kv: KvFormat, batch: int, context: int) -> Work:
    """One decode step: `batch` sequences each adding one token after `context` cached tokens."""
    p = params(model)
    kv_tok = kv_bytes_per_token(model, kv)
    return Work(
        matmul_flops=batch * 2 * (p.body_active + p.head),
        attention_flops=batch * _attention_flops(model, 1, context),
        weight_bytes=_weights_touched(model, wb, batch),
        kv_bytes=batch * (context + 1) * kv_tok,
        activation_bytes=_activations(model, batch),
        collectives=2 * model.layers,
        collective_payload=batch * model.hidden * ACT_BYTES,
        kernel="gemv",
    )


def prefill_work(
    model: Model, wb: WeightBytes, kv: KvFormat, tokens: int, prior: int = 0, kernel: Kernel = "gemm"
) -> Work:
    """A prefill chunk of `tokens` new tokens of one sequence after `prior` cached ones; logits for the last only."""
    p = params(model)
    kv_tok = kv_bytes_per_token(model, kv)
    return Work(
        matmul_flops=tokens * 2 * p.body_active + 2 * p.head,
        attention_flops=_attention_flops(model, tokens, prior),
        weight_bytes=_weights_touched(model, wb, tokens),
        kv_bytes=(prior + tokens) * kv_tok,
        activation_bytes=_activations(model, tokens),
        collectives=2 * model.layers,
        collective_payload=tokens * model.hidden * ACT_BYTES,
        kernel=kernel,
    )


@dataclass(frozen=True, slots=True)
class StepTime:
    seconds: float
    compute_s: float
    memory_s: float
    interconnect_s: float
    overhead_s: float
    flops: float
    bytes: float
    matmul_dtype: DType
    attention_dtype: DType

    @property
    def bound(self) -> str:
        terms = {"compute": self.compute_s, "memory": self.memory_s, "interconnect": self.interconnect_s}
        return max(terms, key=lambda k: terms[k])

    def __add__(self, other: StepTime) -> StepTime:
        return StepTime(
            self.seconds + other.seconds,
            self.compute_s + other.compute_s,
            self.memory_s + other.memory_s,
            self.interconnect_s + other.interconnect_s,
            self.overhead_s + other.overhead_s,
            self.flops + other.flops,
            self.bytes + other.bytes,
            self.matmul_dtype,
            self.attention_dtype,
        )


@dataclass(frozen=True, slots=True)
class Device:
    """What `devices` tensor-parallel devices (or `threads` cores of a CPU) deliver, before efficiency."""

    hw: Hardware
    eff: EfficiencyClass
    devices: int = 1
    threads: int | None = None

    @property
    def core_share(self) -> float:
        if self.hw.cores is None or self.threads is None:
            return 1.0
        return min(self.threads, self.hw.cores) / self.hw.cores

    @property
    def bandwidth(self) -> float:
        """Bytes/s of all devices; a CPU with fewer threads than cores reaches threads × one core's bandwidth."""
        bw = self.hw.memory_bw_gbs
        if self.hw.memory_bw_gbs_per_core is not None and self.threads is not None:
            bw = min(bw, self.threads * self.hw.memory_bw_gbs_per_core)
        return bw * 1e9 * self.devices

    def flops(self, dtype: DType) -> tuple[float, DType]:
        peak, used = peak_flops(self.hw, dtype)
        return peak * self.devices * self.core_share, used

    def time(self, work: Work, matmul: DType, attention: DType) -> StepTime:
        mm_peak, mm_used = self.flops(matmul)
        at_peak, at_used = self.flops(attention)
        efficiency = {
            "gemm": self.eff.compute,
            "gemv": self.eff.compute_decode or self.eff.compute,
            "untiled": self.eff.compute_untiled or self.eff.compute,
        }[work.kernel]
        compute = (work.matmul_flops / mm_peak + work.attention_flops / at_peak) / efficiency
        memory = work.bytes / (self.bandwidth * self.eff.memory)
        comm = 0.0
        if self.devices > 1:
            link = self.hw.interconnect_gbs * 1e9 * self.eff.interconnect
            if link <= 0:
                raise ValueError(f"{self.hw.name} has no device interconnect for tensor parallelism")
            ring = 2 * (self.devices - 1) / self.devices * work.collective_payload / link
            comm = work.collectives * (ring + self.eff.collective_latency_s)
        overhead = self.eff.step_overhead_s
        return StepTime(
            max(compute, memory) + comm + overhead,
            compute,
            memory,
            comm,
            overhead,
            work.flops,
            work.bytes,
            mm_used,
            at_used,
        )
