"""Serving performance of one configuration (model × hardware × devices × weight and KV formats × engine).

Continuous batching in steady state with `batch` sequences in flight, each of `input` prompt tokens and `output`
generated tokens. Every cycle each sequence is prefilled once (the prefill yields its first token) and decoded
`output - 1` times; prefills of other sequences stall the decode steps:

    cycle = batch × prefill(input) + (output - 1) × decode_step(batch, input + output/2)
    TTFT  = prefill(input) (+ one decode step of waiting when batch > 1)
    TPOT  = ((output - 1) × decode_step + (batch - 1) × prefill) / (output - 1)
    requests/s = batch / cycle,   output tokens/s = requests/s × output

At an SLO the batch is the largest that meets TTFT/TPOT/E2E and fits in memory (binary search: every term grows
with the batch). Queueing beyond one step is not modelled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from margin.plan.catalog import Catalog, DType, EfficiencyClass, Engine, Hardware, KvFormat, Model
from margin.plan.memory import MemoryPlan, WeightBytes, plan_memory, resolve_weights, weight_bytes
from margin.plan.roofline import (
    Device,
    Kernel,
    StepTime,
    attention_dtype,
    decode_work,
    peak_flops,
    prefill_work,
)

# What a plan may ask for: past these the numbers mean nothing and the searches take minutes, or never end
# (a 10^23-token prompt). The CLI options, the workload file and `Setup` all check them.
MAX_DEVICES = 1024  # devices per replica
MAX_THREADS = 4096
MAX_TOKENS = 10_000_000  # prompt or output tokens of one request (no catalog model reads 10M)
MAX_BATCH = 1_000_000  # sequences in flight
MAX_RATE_RPS = 1_000_000.0  # requests/s to serve


def tensor_parallel_problem(model: Model, devices: int) -> str | None:
    """Why `model` cannot be split over `devices` tensor-parallel devices, as vLLM refuses it (its
    QKVParallelLinear): each device takes heads / devices query heads, and heads / devices KV heads, or, with
    more devices than KV heads (GQA), one KV head copied to devices / kv_heads devices. None: it can."""
    if devices == 1:
        return None
    if model.heads % devices:
        return f"{model.heads} attention heads do not divide over {devices} devices (tensor parallel)"
    kv = model.kv_heads
    if (kv % devices if devices < kv else devices % kv) != 0:
        return f"{kv} KV heads neither divide over {devices} devices nor {devices} devices over them"
    return None


@dataclass(frozen=True)
class Setup:
    catalog: Catalog
    model_key: str
    hardware_key: str
    weights: str
    kv: str = "fp16"
    devices: int = 1
    engine_key: str = "vllm"
    threads: int | None = None
    efficiency: EfficiencyClass | None = None  # calibrated values for this hardware; None = the class prior

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= MAX_DEVICES:
            raise ValueError(f"devices must be 1 to {MAX_DEVICES}, not {self.devices}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be 1 to {MAX_THREADS}, not {self.threads}")

    @property
    def model(self) -> Model:
        return self.catalog.get_model(self.model_key)

    @property
    def hw(self) -> Hardware:
        return self.catalog.get_hardware(self.hardware_key)

    @property
    def eff(self) -> EfficiencyClass:
        return self.efficiency or self.catalog.efficiency_for(self.hardware_key)

    @property
    def engine(self) -> Engine:
        return self.catalog.get_engine(self.engine_key)

    @property
    def kv_format(self) -> KvFormat:
        return self.catalog.get_kv(self.kv)

    @property
    def weight_bytes(self) -> WeightBytes:
        return weight_bytes(self.catalog, self.model, self.weights)

    @property
    def device(self) -> Device:
        return Device(self.hw, self.eff, self.devices, self.threads)

    def parallel_problem(self) -> str | None:
        """Why this model cannot run on these devices in tensor parallel (`tensor_parallel_problem`)."""
        return tensor_parallel_problem(self.model, self.devices)

    def label(self) -> str:
        threads = f" {self.threads} threads" if self.threads else ""
        return f"{self.model_key} on {self.devices}× {self.hardware_key} ({self.weights}, KV {self.kv}{threads})"

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_key,
            "hardware": self.hardware_key,
            "devices": self.devices,
            "weights": self.weights,
            "kv": self.kv,
            "engine": self.engine_key,
            "threads": self.threads,
            "weights_compute": self.weights_compute,
            "matmul_dtype": self.matmul_dtype,
            "matmul_peak_tflops": self.hw.peak_tflops[self.matmul_dtype],  # per device
        }

    def _dtypes(self) -> tuple[DType, DType]:
        body, _ = resolve_weights(self.catalog, self.model, self.weights)
        return body.compute, attention_dtype(self.kv_format)

    @property
    def weights_compute(self) -> DType:
        """The math the weight format is made for (fp8: W8A8)."""
        return self._dtypes()[0]

    @property
    def matmul_dtype(self) -> DType:
        """The math this hardware runs the weights in: their own, or, without units for it, the one it falls back
        to (roofline.FALLBACK). fp8 on an A100 is weight-only: 8-bit storage (and reads) dequantized to bf16 math,
        at the A100's 16-bit rate (bf16 = fp16 = 312 TFLOPS), as vLLM's FP8 Marlin kernels run it on Ampere."""
        return peak_flops(self.hw, self.weights_compute)[1]

    @property
    def prefill_kernel(self) -> Kernel:
        """llama.cpp on a CPU has tiled prompt kernels for some formats only; other hardware: always tiled."""
        body, _ = resolve_weights(self.catalog, self.model, self.weights)
        return "untiled" if self.hw.kind == "cpu" and not body.cpu_tiled_gemm else "gemm"

    def prefill(self, tokens: int) -> StepTime:
        """Prefill of one sequence in chunks of the engine's step budget."""
        matmul, attention = self._dtypes()
        chunk, done, total, kernel = self.engine.max_tokens_per_step, 0, None, self.prefill_kernel
        while done < max(tokens, 1):
            n = min(chunk, max(tokens, 1) - done)
            work = prefill_work(self.model, self.weight_bytes, self.kv_format, n, done, kernel)
            step = self.device.time(work, matmul, attention)
            total = step if total is None else total + step
            done += n
        assert total is not None
        return total

    def decode(self, batch: int, context: float) -> StepTime:
        matmul, attention = self._dtypes()
        work = decode_work(self.model, self.weight_bytes, self.kv_format, batch, round(context))
        return self.device.time(work, matmul, attention)

    def memory(self, batch: int, context: int) -> MemoryPlan:
        return plan_memory(
            self.catalog, self.model, self.hw, self.weights, self.kv, self.devices, self.engine, batch, context
        )


@dataclass(frozen=True, slots=True)
class ServePoint:
    batch: int
    input_tokens: int
    output_tokens: int
    prefill: StepTime
    decode: StepTime
    ttft_s: float
    tpot_s: float
    e2e_s: float
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    mfu: float  # decode step: achieved FLOP/s over peak (matmul dtype)
    mbu: float  # decode step: achieved bytes/s over peak bandwidth

    @property
    def prefill_share(self) -> float:
        """Share of a cycle spent prefilling (the rest decodes)."""
        prefill = self.batch * self.prefill.seconds
        return prefill / (prefill + max(self.output_tokens - 1, 0) * self.decode.seconds)

    @property
    def bound(self) -> str:
        """What bounds throughput: the bound of the phase that takes most of the cycle."""
        return self.prefill.bound if self.prefill_share >= 0.5 else self.decode.bound

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "bound": self.bound,
            "prefill_share": round(self.prefill_share, 4),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "ttft_ms": round(self.ttft_s * 1000, 3),
            "tpot_ms": round(self.tpot_s * 1000, 4),
            "e2e_ms": round(self.e2e_s * 1000, 2),
            "requests_per_s": round(self.requests_per_s, 4),
            "output_tokens_per_s": round(self.output_tokens_per_s, 2),
            "total_tokens_per_s": round(self.total_tokens_per_s, 2),
            "prefill": step_json(self.prefill),
            "decode_step": step_json(self.decode),
            "decode_mfu": round(self.mfu, 4),
            "decode_mbu": round(self.mbu, 4),
        }


def step_json(step: StepTime) -> dict[str, Any]:
    return {
        "seconds": step.seconds,
        "bound": step.bound,
        "compute_s": step.compute_s,
        "memory_s": step.memory_s,
        "interconnect_s": step.interconnect_s,
        "overhead_s": step.overhead_s,
        "gflops": step.flops / 1e9,
        "gbytes": step.bytes / 1e9,
        "matmul_dtype": step.matmul_dtype,
        "attention_dtype": step.attention_dtype,
    }


def serve(setup: Setup, input_tokens: int, output_tokens: int, batch: int) -> ServePoint:
    prefill = setup.prefill(input_tokens)
    steps = max(output_tokens - 1, 0)
    decode = setup.decode(batch, input_tokens + steps / 2)
    cycle = batch * prefill.seconds + steps * decode.seconds
    ttft = prefill.seconds + (decode.seconds if batch > 1 else 0.0)
    tpot = (steps * decode.seconds + (batch - 1) * prefill.seconds) / steps if steps else 0.0
    requests = batch / cycle
    peak, _ = setup.device.flops(decode.matmul_dtype)
    return ServePoint(
        batch,
        input_tokens,
        output_tokens,
        prefill,
        decode,
        ttft,
        tpot,
        ttft + steps * tpot,
        requests,
        requests * output_tokens,
        requests * (input_tokens + output_tokens),
        decode.flops / decode.seconds / peak,
        decode.bytes / decode.seconds / setup.device.bandwidth,
    )


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def violated(self, point: ServePoint, tail_ttft_s: float) -> str | None:
        """The first SLO the point misses (TTFT checked at the tail prompt length), or None."""
        if self.ttft_s is not None and tail_ttft_s > self.ttft_s:
            return "ttft_slo"
        if self.tpot_s is not None and point.tpot_s > self.tpot_s:
            return "tpot_slo"
        if self.e2e_s is not None and point.e2e_s > self.e2e_s:
            return "e2e_slo"
        return None


@dataclass(frozen=True, slots=True)
class Capacity:
    """The best a configuration does under an SLO: its point, what limits the batch, its memory."""

    point: ServePoint | None  # None: infeasible
    limit: str  # memory | engine | ttft_slo | tpot_slo | e2e_slo | context
    memory: MemoryPlan


def at_slo(
    setup: Setup, input_tokens: int, output_tokens: int, slo: Slo, tail_input: int | None = None, tail_context: int = 0
) -> Capacity:
    """Largest batch meeting `slo` that fits in memory; `tail_context` (prompt + output) must fit at batch 1."""
    tail_input = tail_input or input_tokens
    memory = setup.memory(1, input_tokens + output_tokens)
    if tail_context > memory.max_context or memory.max_batch < 1:
        return Capacity(None, "context" if memory.max_batch >= 1 else "memory", memory)
    tail_prefill = setup.prefill(tail_input).seconds

    def check(batch: int) -> tuple[ServePoint, str | None]:
        point = serve(setup, input_tokens, output_tokens, batch)
        wait = point.decode.seconds if batch > 1 else 0.0
        return point, slo.violated(point, tail_prefill + wait)

    best, miss = check(1)
    if miss is not None:
        return Capacity(None, miss, memory)
    low, high = 1, memory.max_batch
    while low < high:
        mid = (low + high + 1) // 2
        point, miss = check(mid)
        if miss is None:
            low, best = mid, point
        else:
            high = mid - 1
    limit = memory.limit if low == memory.max_batch else check(low + 1)[1] or memory.limit
    return Capacity(best, limit, setup.memory(best.batch, input_tokens + output_tokens))
