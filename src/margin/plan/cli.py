"""`margin plan …`: one configuration's breakdown, placement of a workload, catalogs, calibration, validation.
Heavy imports (matplotlib) stay inside the commands."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from margin.errors import ConfigError, MarginError

app = typer.Typer(
    no_args_is_help=False,
    invoke_without_command=True,
    help="Capacity, TCO and carbon planner: `margin plan --model M --hardware H` for one configuration, "
    "`margin plan place --workload W.yaml` to search hardware × regions.",
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
CalibrationOpt = Annotated[
    Path | None, typer.Option("--calibration", help="Calibration file from `margin plan calibrate`.")
]


def _console() -> Console:
    return Console(highlight=False, width=160)


def _fail(error: MarginError | ValueError) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {getattr(error, 'message', error)}")
    return typer.Exit(2)


def _print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _calibrations(path: Path | None) -> dict[str, Any]:
    from margin.plan.calibrate import load_calibration

    return {} if path is None else load_calibration(path)


@app.callback()
def plan(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Model key (`margin plan catalog models`).")] = None,
    hardware: Annotated[str | None, typer.Option(help="Hardware key (`margin plan catalog hardware`).")] = None,
    devices: Annotated[int, typer.Option(help="Devices per replica (tensor parallel).")] = 1,
    weights: Annotated[str, typer.Option(help="Weight format: bf16, fp8, int8, int4, fp4, b1.58, gguf-q4_1…")] = "bf16",
    kv: Annotated[str, typer.Option(help="KV-cache format: fp16, fp8, kivi-4, tq-mse-3…")] = "fp16",
    engine: Annotated[str, typer.Option(help="vllm, trtllm or llamacpp (batch 1).")] = "vllm",
    threads: Annotated[int | None, typer.Option(help="CPU threads (CPU hardware).")] = None,
    input_tokens: Annotated[int, typer.Option("--input", help="Prompt tokens.")] = 1000,
    output_tokens: Annotated[int, typer.Option("--output", help="Output tokens.")] = 200,
    batch: Annotated[int | None, typer.Option(help="Sequences in flight (default: the most the SLOs allow).")] = None,
    ttft_ms: Annotated[float | None, typer.Option(help="TTFT SLO (ms).")] = None,
    tpot_ms: Annotated[float | None, typer.Option(help="TPOT SLO (ms).")] = None,
    region: Annotated[str | None, typer.Option(help="Region key: adds $/1K tokens, J/token, gCO2e/1K.")] = None,
    rate: Annotated[float | None, typer.Option(help="Requests/s to serve (replicas, utilization).")] = None,
    energy_overhead: Annotated[Decimal, typer.Option(help="DESIGN §4 energy & cooling share.")] = Decimal(0),
    network_overhead: Annotated[Decimal, typer.Option(help="DESIGN §4 networking share.")] = Decimal(0),
    calibration: CalibrationOpt = None,
    json: JsonOpt = False,
) -> None:
    """One configuration: TTFT, TPOT, tokens/s, requests/s at the SLO, why it is bound, where the memory goes,
    and with --region its $/1K tokens, J/token and gCO2e/1K tokens."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None or hardware is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0 if model is None and hardware is None else 2)
    from margin.plan.catalog import Catalog
    from margin.plan.perf import Setup
    from margin.plan.single import one_config

    try:
        catalog = Catalog.bundled()
        calibrated = _calibrations(calibration)
        if calibration is not None and hardware not in calibrated:  # was ignored: uncalibrated numbers, no word
            raise ConfigError(f"calibration file {calibration} calibrates {', '.join(calibrated)}, not {hardware}")
        eff = calibrated.get(hardware)
        setup = Setup(catalog, model, hardware, weights, kv, devices, engine, threads, eff)
        data = one_config(
            setup,
            input_tokens,
            output_tokens,
            batch,
            (ttft_ms, tpot_ms),
            region,
            rate,
            (energy_overhead, network_overhead),
        )
    except (MarginError, ValueError) as exc:
        raise _fail(exc) from exc
    if json:
        _print_json(data)
        return
    from margin.plan.render import breakdown

    breakdown(_console(), data)


@app.command()
def place(
    workload: Annotated[
        Path, typer.Option("--workload", "-w", help="Workload YAML (rate, lengths, SLOs, constraints).")
    ],
    png: Annotated[Path | None, typer.Option("--png", help="Draw the cost–carbon Pareto set to this PNG.")] = None,
    top: Annotated[int, typer.Option(min=1, help="Cheapest feasible configurations to list.")] = 10,
    calibration: CalibrationOpt = None,
    json: JsonOpt = False,
) -> None:
    """Search hardware × devices × quantization × region for the cheapest feasible configurations and print the
    cost–carbon Pareto set with the binding constraint of each."""
    from margin.plan.catalog import Catalog
    from margin.plan.placement import place as run_place
    from margin.plan.workload import load_workload

    try:
        result = run_place(Catalog.bundled(), load_workload(workload), _calibrations(calibration))
    except (MarginError, ValueError) as exc:
        raise _fail(exc) from exc
    if png is not None:
        from margin.plan.render import pareto_png

        try:
            pareto_png(result, png)
        except MarginError as exc:
            raise _fail(exc) from exc
    if json:
        _print_json(result.to_json(top) | {"png": None if png is None else str(png)})
        return
    from margin.plan.render import placement_table

    placement_table(_console(), result, top)
    if png is not None:
        _console().print(f"wrote {png}")


@app.command()
def catalog(
    what: Annotated[
        str, typer.Argument(help="hardware, regions, models, formats or efficiency (tables; --json for every field).")
    ] = "hardware",
    json: JsonOpt = False,
) -> None:
    """List a catalog with its sources and dates."""
    from margin.plan.catalog import Catalog
    from margin.plan.listing import listing

    try:
        data = listing(Catalog.bundled(), what)
    except (MarginError, ValueError) as exc:
        raise _fail(exc) from exc
    if json:
        _print_json(data)
        return
    from margin.plan.listing import print_listing

    print_listing(_console(), what, data)


@app.command("calibrate")
def calibrate_command(
    bench: Annotated[Path, typer.Option(help="A `margin bench` result JSON measured on this hardware.")],
    model: Annotated[str, typer.Option(help="Model key the bench ran.")],
    hardware: Annotated[str, typer.Option(help="Hardware key the bench ran on.")],
    weights: Annotated[str, typer.Option(help="Weight format the bench ran (e.g. gguf-q4_1).")],
    out: Annotated[Path, typer.Option(help="Calibration YAML to write.")],
    engine: Annotated[str, typer.Option(help="Engine the bench measured.")] = "llamacpp",
    threads: Annotated[int | None, typer.Option(help="CPU threads the backend used.")] = None,
    json: JsonOpt = False,
) -> None:
    """Fit this hardware's efficiencies to a measured point (TTFT and TPOT p50 at concurrency 1): compute and memory,
    or on a CPU its prompt and decode kernels'."""
    from margin.plan.calibrate import calibrate, observations_from_bench, write_calibration
    from margin.plan.catalog import Catalog

    try:
        cat = Catalog.bundled()
        points = observations_from_bench(bench, model, hardware, weights, engine=engine, threads=threads)
        eff = calibrate(cat, hardware, points)
        write_calibration(out, hardware, eff, points)
    except (MarginError, ValueError) as exc:
        raise _fail(exc) from exc
    fitted = eff.model_dump(include={"compute", "compute_untiled", "compute_decode", "memory"}, exclude_none=True)
    if json:
        _print_json({"hardware": hardware, **fitted, "out": str(out)})
        return
    _console().print(f"{hardware}: " + ", ".join(f"{k} {v:.3f}" for k, v in fitted.items()) + f" → {out}")


@app.command()
def validate(
    points: Annotated[
        Path | None, typer.Option(help="Observations YAML (default: the bundled published points).")
    ] = None,
    calibration: CalibrationOpt = None,
    json: JsonOpt = False,
) -> None:
    """Predict published measurements (TensorRT-LLM, ML.ENERGY, llama.cpp) and report the error of each point."""
    from margin.plan.catalog import Catalog
    from margin.plan.validate import evaluate, load_observations, median_abs_error

    try:
        results = evaluate(load_observations(points), Catalog.bundled(), _calibrations(calibration))
    except (MarginError, ValueError) as exc:
        raise _fail(exc) from exc
    groups = sorted({r.obs.group for r in results})
    medians = {g: median_abs_error(results, g) for g in groups}
    if json:
        _print_json({"points": [r.to_json() for r in results], "median_abs_error_pct": medians})
        return
    from margin.plan.render import validation_table

    validation_table(_console(), results)
    for group, value in medians.items():
        _console().print(
            f"{group}: median |error| {value:.1f}% on points not used for calibration"
            if value is not None
            else f"{group}: no validation points"
        )
