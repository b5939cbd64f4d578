"""Tables and the Pareto PNG for `margin plan` (JSON comes from each value's `to_json`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from margin.errors import InvalidRequest
from margin.plan.perf import Setup
from margin.plan.placement import Option, Placement
from margin.plan.validate import PointResult


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def why_bound(step: dict[str, Any]) -> str:
    """One line on what bounds a step and by how much."""
    compute, memory, comm = step["compute_s"], step["memory_s"], step["interconnect_s"]
    bound = step["bound"]
    if bound == "memory":
        ratio = memory / compute if compute else float("inf")
        return (
            f"memory-bound: moving {step['gbytes']:.3g} GB takes {ratio:.1f}× as long as its {step['gflops']:.3g} GFLOP"
        )
    if bound == "compute":
        ratio = compute / memory if memory else float("inf")
        return f"compute-bound: {step['gflops']:.3g} GFLOP take {ratio:.1f}× as long as moving {step['gbytes']:.3g} GB"
    return f"interconnect-bound: collectives {comm * 1000:.3g} ms vs compute {compute * 1000:.3g} ms"


def breakdown(console: Console, data: dict[str, Any]) -> None:
    """`margin plan` for one configuration: performance, why it is bound, where the memory goes, cost."""
    cfg, point, mem = data["config"], data["performance"], data["memory"]
    console.print(f"[bold]{data['label']}[/]  engine {cfg['engine']}, batch {point['batch']}")
    if cfg["matmul_dtype"] != cfg["weights_compute"]:
        console.print(
            f"{cfg['weights']} weights: {cfg['hardware']} has no {cfg['weights_compute']} units, so weight-only: "
            f"{cfg['weights']} storage, {cfg['matmul_dtype']} math at {cfg['matmul_peak_tflops']:g} TFLOPS a device"
        )
    if not data["feasible"]:
        console.print(
            f"[bold red]not feasible:[/] {data['infeasible_because']} (the numbers below are what it would take)"
        )
    perf = Table("metric", "value", title="performance (per replica)")
    perf.add_row("TTFT", f"{point['ttft_ms']:,.2f} ms")
    perf.add_row("TPOT", f"{point['tpot_ms']:,.3f} ms")
    perf.add_row("output tokens/s", f"{point['output_tokens_per_s']:,.1f}")
    perf.add_row("requests/s", f"{point['requests_per_s']:,.3f}")
    perf.add_row("throughput bound", f"{point['bound']} (prefill {point['prefill_share']:.0%} of the time)")
    perf.add_row("decode MFU / MBU", f"{point['decode_mfu']:.1%} / {point['decode_mbu']:.1%}")
    console.print(perf)
    console.print(f"prefill ({point['input_tokens']} tokens): {why_bound(point['prefill'])}")
    console.print(f"decode step (batch {point['batch']}): {why_bound(point['decode_step'])}")
    table = Table("per device", "GB", title=f"memory on {mem['devices']} device(s)")
    for key in ("weights", "kv_cache", "activations", "peak", "capacity"):
        table.add_row(key.replace("_", " "), f"{mem[f'{key}_gb_per_device']:,.3f}")
    console.print(table)
    console.print(
        f"KV cache {mem['kv_bytes_per_token']:,.0f} B/token; fits batch ≤ {mem['max_batch']} ({mem['max_batch_limit']})"
        f" at this context, context ≤ {mem['max_context']:,} at batch 1"
    )
    if data.get("economics"):
        economics_table(console, data["economics"])


def economics_table(console: Console, econ: dict[str, Any]) -> None:
    table = Table("metric", "value", title=f"economics in {econ['region']}")
    table.add_row(
        "price", f"${econ['usd_per_device_hour']}/device-hour — {econ['price_basis']} [{econ['price_confidence']}]"
    )
    table.add_row(
        "replicas × devices", f"{econ['replicas']} ({econ['devices']} devices), busy {econ['busy_fraction']:.0%}"
    )
    table.add_row("$/month", f"${econ['usd_per_month']}")
    table.add_row("$/1K tokens", f"${econ['usd_per_1k_tokens']} (output only: ${econ['usd_per_1k_output_tokens']})")
    table.add_row(
        "J/token (facility)", f"{econ['j_per_token']:.4g} (per output token {econ['j_per_output_token']:.4g})"
    )
    table.add_row(
        "gCO2e/1K tokens",
        f"{econ['co2e_g_per_1k_tokens']:.4g} at {econ['grid_g_per_kwh']:g} g/kWh ({econ['grid_source']})",
    )
    console.print(table)


def _formats(cfg: Setup) -> str:
    """weights/KV, and the math when the hardware lacks the weights' own (fp8 on an A100: bf16 math)."""
    math = cfg.matmul_dtype
    return f"{cfg.weights}{'' if math == cfg.weights_compute else f' ({math} math)'}/{cfg.kv}"


def _option_row(rank: int, option: Option) -> list[str]:
    assert option.capacity.point is not None
    cfg, econ = option.setup, option.econ
    name, slack = option.binding
    return [
        str(rank),
        f"{cfg.devices}× {cfg.hardware_key}",
        _formats(cfg),
        econ.region,
        str(econ.replicas),
        f"{option.capacity.point.batch}",
        f"${float(econ.usd_per_1k_tokens):.3g}",
        f"{econ.co2e_g_per_1k_tokens:.3g}",
        f"${econ.usd_per_month:,.0f}",
        option.capacity.limit,
        f"{name} ({slack:.0%})",
    ]


def placement_table(console: Console, result: Placement, top: int) -> None:
    w = result.workload
    console.print(
        f"[bold]{w.model}[/] at {w.rate_rps:g} req/s, prompt ≈{w.mean_input()} (p95 {w.tail_input()}), "
        f"output ≈{w.mean_output()} tokens; searched {result.searched} configurations × regions, "
        f"{len(result.options)} feasible"
    )
    columns = (
        "#",
        "hardware",
        "weights/KV",
        "region",
        "replicas",
        "batch",
        "$/1K tok",
        "gCO2e/1K",
        "$/month",
        "batch limit",
        "binding (slack)",
    )
    for title, rows in (("cost–carbon Pareto set", result.pareto), (f"cheapest {top}", result.cheapest[:top])):
        table = Table(*columns, title=title)
        for rank, option in enumerate(rows, 1):
            table.add_row(*_option_row(rank, option))
        console.print(table)
    if result.rejected:
        console.print("rejected: " + ", ".join(f"{k} {v}" for k, v in result.rejected.most_common()))


def pareto_png(result: Placement, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    xs = [float(o.econ.usd_per_1k_tokens) for o in result.options]
    ys = [o.econ.co2e_g_per_1k_tokens for o in result.options]
    ax.scatter(xs, ys, s=10, color="0.7", label="feasible")
    front = result.pareto
    ax.plot(
        [float(o.econ.usd_per_1k_tokens) for o in front],
        [o.econ.co2e_g_per_1k_tokens for o in front],
        "o-",
        color="tab:red",
        label="Pareto set",
    )
    for o in front:
        label = f"{o.setup.devices}× {o.setup.hardware_key} {o.setup.weights}/{o.setup.kv} @ {o.econ.region}"
        ax.annotate(label, (float(o.econ.usd_per_1k_tokens), o.econ.co2e_g_per_1k_tokens), fontsize=7)
    if not xs:  # nothing feasible: an empty chart that says so (a log scale of no points was a traceback)
        ax.text(0.5, 0.5, "no feasible configuration", ha="center", va="center", transform=ax.transAxes)
    # a log axis only holds positive values: a zero-carbon region or a free option keeps that axis linear
    ax.set_xscale("log" if xs and min(xs) > 0 else "linear")
    ax.set_yscale("log" if ys and min(ys) > 0 else "linear")
    ax.set_xlabel("$ per 1K tokens")
    ax.set_ylabel("gCO2e per 1K tokens")
    ax.set_title(f"{result.workload.model} at {result.workload.rate_rps:g} req/s: cost vs carbon")
    ax.legend()
    fig.tight_layout()
    try:  # PNG whatever the name ends with (matplotlib would append .png to a name without a suffix)
        fig.savefig(path, dpi=120, format="png")
    except OSError as exc:
        raise InvalidRequest(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)


def validation_table(console: Console, results: list[PointResult]) -> None:
    table = Table("point", "role", "metric", "predicted", "measured", "error", "bound")
    for r in results:
        table.add_row(
            r.obs.id,
            r.obs.role,
            r.obs.metric,
            f"{r.predicted:,.4g}",
            f"{r.obs.value:,.4g}",
            f"{r.error_pct:+.1f}%",
            r.bound,
        )
    console.print(table)
