"""Validate `margin plan` against measurements: this CPU (SmolLM2-135M on raw llama.cpp) and published GPU numbers.

    nice python benchmarks/plan_validation.py [--reps 5] [--reuse benchmarks/results/plan_validation.json]

1. Probes this machine: memory bandwidth (numpy reductions over 512 MiB, 1 and 2 threads) and fp32 GEMM.
2. Makes the quantizations: an F16 GGUF written from the bundled Q4_1 one with the `gguf` package (dequantized
   weights: speed depends on tensor types and sizes, not values), then Q4_0, Q5_0, Q8_0 with llama_model_quantize.
3. Measures TTFT and decode tok/s with llama_cpp.Llama for prompt lengths, output lengths, thread counts 1/2 and
   the quantizations: random token prompts (no prefix reuse), exactly the asked output length, `--reps` rounds
   over all points (repeats spread in time), each run after waiting (up to `--wait` s) for a quiet machine.
   Wall-clock and CPU-time values are both kept; `--primary` picks the measure the errors use (median of the
   repeats; CPU time by default, because this 2-core machine is shared and a run mostly waits for a core).
4. Calibrates the CPU efficiency (`margin plan`'s compute and memory factors) on ONE point — Q4_1, 2 threads,
   128 prompt tokens, 128 output tokens (its TTFT and decode tok/s) — and predicts every other point.
5. Predicts the published points (`src/margin/plan/data/published.yaml`: TensorRT-LLM, ML.ENERGY, llama.cpp
   Metal) with the bundled (GPU-calibrated) efficiencies.

Writes benchmarks/results/plan_validation.json: points[] (predicted, measured, error_pct, source),
median_abs_error_pct per group (cpu, gpu_published, soc_published), the misses, raw runs and the probe.
`--reuse` skips steps 1-3 and re-predicts from a previous result's raw measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from margin.backends.llamacpp import resolve_model_file
from margin.plan.catalog import Catalog, Provenance
from margin.plan.memory import weight_bytes
from margin.plan.validate import Observation, evaluate, fit, fit_params, load_observations, median_abs_error

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(__file__).resolve().parent / ".cache" / "plan"
HARDWARE = "cpu-this-machine"
MODEL = "smollm2-135m"
CALIBRATION = ("gguf-q4_1", 2, 128, 128)
# (weights, threads, prompt tokens, output tokens)
CONFIGS = [
    CALIBRATION,
    *(("gguf-q4_1", 2, n, 128) for n in (32, 512, 1024, 1536)),
    *(("gguf-q4_1", 2, 128, n) for n in (32, 256, 512)),
    ("gguf-q4_1", 1, 128, 128),
    ("gguf-q4_1", 1, 512, 128),
    *((w, 2, 128, 128) for w in ("gguf-q4_0", "gguf-q5_0", "gguf-q8_0", "gguf-f16")),
    ("gguf-q8_0", 2, 512, 128),
    ("gguf-f16", 2, 512, 128),
    ("gguf-f16", 1, 128, 128),
]
FTYPES = {"gguf-q4_0": 2, "gguf-q8_0": 7, "gguf-q5_0": 8}


def probe_bandwidth(threads: int, size: int = 512 * 2**20, reps: int = 7) -> float:
    """Read bandwidth (GB/s) of `threads` threads running BLAS sdot over two 256 MiB float32 arrays (best of
    `reps`): numpy's own reductions are compute-bound below this machine's bandwidth."""
    a, b = np.ones(size // 8, dtype=np.float32), np.ones(size // 8, dtype=np.float32)
    pairs, best = list(zip(np.array_split(a, threads), np.array_split(b, threads), strict=True)), 0.0
    for _ in range(reps):
        workers = [threading.Thread(target=np.dot, args=pair) for pair in pairs]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, (a.nbytes + b.nbytes) / (time.perf_counter() - start) / 1e9)
    return best


def probe_gemm(threads: int, n: int = 1024, reps: int = 5) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    best = 0.0
    for _ in range(reps):
        workers = [threading.Thread(target=np.dot, args=(a, b)) for _ in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, threads * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def probe() -> dict[str, Any]:
    return {
        "load_avg_before": os.getloadavg(),
        "bandwidth_gbs": {t: round(probe_bandwidth(t), 2) for t in (1, 2)},
        "fp32_gemm_gflops": {t: round(probe_gemm(t), 1) for t in (1, 2)},
        "note": "numpy + OpenBLAS (OPENBLAS_NUM_THREADS=1): sdot reads and sgemm, on a shared VM; best of the repeats",
    }


def write_f16(source: Path, target: Path) -> None:
    """An F16 GGUF of the same model: every quantized tensor dequantized, 1-D tensors kept F32."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(target), arch="llama")
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = 1 if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    for tensor in reader.tensors:
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor.name, np.array(tensor.data, dtype=np.float32))
        else:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float16)
            writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(source: Path, target: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 2
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0 or not target.exists():
        raise SystemExit(f"llama_model_quantize failed ({code}) for {target.name}")


def prepare_models() -> dict[str, Path]:
    """The bundled Q4_1 GGUF and the others made from it, cached under benchmarks/.cache/plan."""
    CACHE.mkdir(parents=True, exist_ok=True)
    files = {"gguf-q4_1": resolve_model_file("builtin:smollm2-135m-q4_1")}
    f16 = CACHE / "smollm2-135m-f16.gguf"
    if not f16.exists():
        write_f16(files["gguf-q4_1"], f16)
    files["gguf-f16"] = f16
    for name, ftype in FTYPES.items():
        path = CACHE / f"smollm2-135m-{name.removeprefix('gguf-')}.gguf"
        if not path.exists():
            quantize(f16, path, ftype)
        files[name] = path
    return files


def tensor_bytes(path: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    kinds: dict[str, int] = {}
    for t in reader.tensors:
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + int(t.n_bytes)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return {"total": sum(kinds.values()), "by_type": kinds, "token_embd": embd.tensor_type.name}


def run_once(llm: Any, prompt: list[int], tokens: int, threads: int) -> dict[str, float]:
    """One request through `Llama.generate` (token ids, greedy; counting tokens, so end tokens do not stop it):
    wall-clock TTFT and decode tok/s, and the same from CPU time (immune to waiting for a core on a shared machine:
    the calling thread's time with one thread, the process's time / threads with more)."""
    llm.reset()

    def cpu() -> float:
        return time.thread_time() if threads == 1 else time.process_time() / threads

    sent, sent_cpu, stamps, cpus = time.perf_counter(), cpu(), [], []
    for _ in llm.generate(prompt, temp=0.0, reset=False):
        stamps.append(time.perf_counter())
        cpus.append(cpu())
        if len(stamps) == tokens:
            break
    nan = float("nan")
    return {
        "ttft_ms": (stamps[0] - sent) * 1000,
        "decode_tok_s": (tokens - 1) / (stamps[-1] - stamps[0]) if tokens > 1 else nan,
        "ttft_cpu_ms": (cpus[0] - sent_cpu) * 1000,
        "decode_cpu_tok_s": (tokens - 1) / (cpus[-1] - cpus[0]) if tokens > 1 and cpus[-1] > cpus[0] else nan,
    }


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs busy (any process) over `seconds`, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet(max_busy: float, timeout_s: float) -> float:
    """Wait (up to `timeout_s`) until other processes use less than `max_busy` of the CPUs; returns the last reading."""
    deadline, busy = time.monotonic() + timeout_s, busy_fraction()
    while busy > max_busy and time.monotonic() < deadline:
        busy = busy_fraction(5.0)
    return busy


def measure(files: dict[str, Path], reps: int, max_busy: float, timeout_s: float) -> list[dict[str, Any]]:
    """`reps` rounds over every configuration (repeats spread in time), each run after the machine is quiet."""
    from llama_cpp import Llama

    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = [
        {"weights": w, "threads": t, "input_tokens": i, "output_tokens": o, "runs": []} for w, t, i, o in CONFIGS
    ]
    for round_ in range(reps):
        for key in dict.fromkeys((row["weights"], row["threads"]) for row in rows):
            llm = Llama(str(files[key[0]]), n_ctx=2048, n_threads=key[1], n_threads_batch=key[1], verbose=False)
            run_once(llm, rng.integers(100, 40000, 16).tolist(), 4, key[1])  # warm-up
            for row in (r for r in rows if (r["weights"], r["threads"]) == key):
                busy = wait_quiet(max_busy, timeout_s)
                prompt = rng.integers(100, 40000, row["input_tokens"]).tolist()
                run = run_once(llm, prompt, row["output_tokens"], key[1])
                row["runs"].append(run | {"busy_before": round(busy, 3), "load_avg": os.getloadavg()[0]})
            del llm
        print(f"round {round_ + 1}/{reps} done, load {os.getloadavg()[0]:.1f}", flush=True)
    for row in rows:
        row["load_avg"] = statistics.median(r["load_avg"] for r in row["runs"])
        print(
            f"{row['weights']:10s} t{row['threads']} in {row['input_tokens']:5d} out {row['output_tokens']:4d}: "
            f"TTFT {statistics.median(r['ttft_ms'] for r in row['runs']):8.1f} ms, "
            f"decode {statistics.median(r['decode_tok_s'] for r in row['runs']):6.1f} tok/s "
            f"(load {row['load_avg']:.1f})",
            flush=True,
        )
    return rows


CPU_SOURCE = "benchmarks/plan_validation.py: raw llama_cpp.Llama on this machine, median of the repeats"


VARIANTS = ("wall-median", "wall-best", "cpu-median")
EFFICIENCY_FIELDS = {"compute", "compute_untiled", "compute_decode", "memory"}


def calibration_point() -> dict[str, Any]:
    return dict(zip(("weights", "threads", "input_tokens", "output_tokens"), CALIBRATION, strict=True))


def observations(rows: list[dict[str, Any]], variant: str) -> list[Observation]:
    """Two points per measured configuration (TTFT, decode tok/s) from the repeats: `wall-median` (the median
    wall-clock value), `wall-best` (the fastest repeat) or `cpu-median` (the median CPU-time value)."""
    clock, stat = variant.split("-")
    suffix = "_cpu" if clock == "cpu" else ""
    points: list[Observation] = []
    when = time.strftime("%Y-%m-%d", time.gmtime())
    for row in rows:
        config = (row["weights"], row["threads"], row["input_tokens"], row["output_tokens"])
        ttfts = [r[f"ttft{suffix}_ms"] for r in row["runs"]]
        rates = [r[f"decode{suffix}_tok_s"] for r in row["runs"]]
        values = {
            "ttft_ms": min(ttfts) if stat == "best" else statistics.median(ttfts),
            "decode_tok_s": max(rates) if stat == "best" else statistics.median(rates),
        }
        tag = f"{row['weights']}-t{row['threads']}-in{row['input_tokens']}-out{row['output_tokens']}"
        source = Provenance(
            source=f"{CPU_SOURCE}: {variant} of {len(row['runs'])} repeats, load average {row['load_avg']:.2f}",
            as_of=when,
            confidence="measured",
        )
        points.extend(
            Observation(
                id=f"cpu-{tag}-{metric}",
                group="cpu",
                model=MODEL,
                hardware=HARDWARE,
                weights=row["weights"],
                kv="fp16",
                engine="llamacpp",
                threads=row["threads"],
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                batch=1,
                metric=metric,
                value=value,
                role="calibrate" if config == CALIBRATION else "validate",
                source=source,
            )
            for metric, value in values.items()
        )
    return points


def predict_cpu(rows: list[dict[str, Any]], catalog: Catalog, variant: str) -> dict[str, Any]:
    """Fit this machine's efficiency on the calibration point, predict every other point."""
    points = observations(rows, variant)
    source = Provenance(
        source=f"benchmarks/plan_validation.py: fitted on {calibration_point()} ({variant})",
        as_of=time.strftime("%Y-%m-%d"),
        confidence="measured",
    )
    calibrating = [p for p in points if p.role == "calibrate"]
    eff = fit(calibrating, catalog, catalog.efficiency_for(HARDWARE), source, fit_params(catalog, calibrating))
    results = evaluate(points, catalog, {HARDWARE: eff})
    return {"efficiency": eff, "results": results, "median": median_abs_error(results, "cpu")}


def summarize(
    rows: list[dict[str, Any]], machine: dict[str, Any], files: dict[str, Any], primary: str
) -> dict[str, Any]:
    catalog = Catalog.bundled()
    cpu = {variant: predict_cpu(rows, catalog, variant) for variant in VARIANTS}
    published = evaluate(load_observations(), catalog)
    results = cpu[primary]["results"] + published
    medians = {g: median_abs_error(results, g) for g in ("cpu", "gpu_published", "soc_published")}
    misses = [r.to_json() | {"why": r.obs.note} for r in results if r.obs.role == "validate" and abs(r.error_pct) > 15]
    spread = [
        statistics.pstdev([r["decode_tok_s"] for r in row["runs"]])
        / statistics.mean([r["decode_tok_s"] for r in row["runs"]])
        * 100
        for row in rows
    ]
    eff = cpu[primary]["efficiency"]
    return {
        "benchmark": "plan_validation",
        "what": "margin plan predictions vs measurements: this CPU (calibrated on one point) and published numbers",
        "calibration_point": dict(
            zip(("weights", "threads", "input_tokens", "output_tokens"), CALIBRATION, strict=True)
        ),
        "cpu_measure": primary,
        "cpu_efficiency_fitted": eff.model_dump(mode="json", include={*EFFICIENCY_FIELDS, "source"}),
        "median_abs_error_pct": {k: None if v is None else round(v, 2) for k, v in medians.items()},
        "targets_pct": {"cpu": 10, "gpu_published": 15},
        "noise": {
            "cpu_median_abs_error_pct_by_measure": {v: round(cpu[v]["median"] or 0, 2) for v in VARIANTS},
            "cpu_efficiency_by_measure": {
                v: cpu[v]["efficiency"].model_dump(include=EFFICIENCY_FIELDS) for v in VARIANTS
            },
            "decode_tok_s_cv_pct_median": round(statistics.median(spread), 2),
            "decode_tok_s_cv_pct_max": round(max(spread), 2),
        },
        "points": [r.to_json() for r in results],
        "points_other_cpu_measures": {v: [r.to_json() for r in cpu[v]["results"]] for v in VARIANTS if v != primary},
        "misses": misses,
        "weight_bytes_predicted_vs_file": {
            name: {"predicted": weight_bytes(catalog, catalog.get_model(MODEL), name).total, "file": info["total"]}
            for name, info in files.items()
            if "total" in info
        },
        "machine": machine,
        "gguf_files": files,
        "cpu_measurements": rows,
        "catalog_versions": catalog.versions,
        "env": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")},
        "versions": {
            "llama_cpp_python": __import__("llama_cpp").__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-busy", type=float, default=0.35, help="wait until the CPUs are less busy than this")
    parser.add_argument("--wait", type=float, default=20, help="longest wait for a quiet machine per run (s)")
    parser.add_argument("--reuse", type=Path, help="re-predict from the raw measurements of a previous result")
    parser.add_argument("--out", type=Path, default=RESULTS / "plan_validation.json")
    parser.add_argument("--primary", choices=VARIANTS, default="cpu-median", help="CPU measure the errors use")
    parser.add_argument("--note", help="a note kept in the result (what this run is)")
    args = parser.parse_args()
    # libgomp spins 300,000 iterations at every barrier before sleeping: on a shared 2-core machine a descheduled
    # peer thread turns that into a 10-100x slowdown of 2-thread runs. Set before llama.cpp loads; recorded.
    os.environ.setdefault("GOMP_SPINCOUNT", "0")
    if args.reuse:
        previous = json.loads(args.reuse.read_text())
        rows, machine, files = previous["cpu_measurements"], previous["machine"], previous["gguf_files"]
    else:
        machine = probe()
        paths = prepare_models()
        files = {name: tensor_bytes(path) for name, path in paths.items()}
        rows = measure(paths, args.reps, args.max_busy, args.wait)
        machine["load_avg_after"] = os.getloadavg()
        raw = {"cpu_measurements": rows, "machine": machine, "gguf_files": files}
        (CACHE / "raw.json").write_text(json.dumps(raw, indent=1))  # re-predict with --reuse if a later step fails
    result = summarize(rows, machine, files, args.primary) | {"note": args.note}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                "median_abs_error_pct": result["median_abs_error_pct"],
                "noise": result["noise"],
                "cpu_efficiency_fitted": result["cpu_efficiency_fitted"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
