"""`margin bench`: options → BenchConfig, a live progress bar, a summary table, the JSON result and plots."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import orjson
import typer
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from margin.errors import InvalidRequest, MarginError
from margin.specs import MAX_OVERHEAD

if TYPE_CHECKING:  # the load generator's imports (aiohttp, numpy) wait until a bench runs
    from rich.progress import Progress

    from margin.bench import economics, loadgen
    from margin.bench.energy import MeterChoice
    from margin.bench.records import RequestRecord
    from margin.bench.runner import BenchConfig

Opt = typer.Option


def _numbers(text: str | None, kind: type[int] | type[float]) -> list[Any]:
    if not text:
        return []
    try:
        return [kind(part) if part.strip() != "inf" else math.inf for part in text.split(",")]
    except ValueError as exc:
        raise InvalidRequest(f"not a list of numbers: {text!r}") from exc


def build_shapes(
    concurrency: str | None, rate: str | None, burstiness: float, duration: float | None, num: int | None, seed: int
) -> list[loadgen.LoadShape]:
    from margin.bench import loadgen

    if bool(concurrency) == bool(rate):
        which = "not both" if concurrency else "one of them is needed"
        raise InvalidRequest(f"give --concurrency N[,N2…] (closed loop) or --rate R[,R2…] (open loop), {which}")
    if duration is None and num is None:
        num = 100
    closed = [
        loadgen.LoadShape(concurrency=c, num_requests=num, duration_s=duration, seed=seed)
        for c in _numbers(concurrency, int)
    ]
    opened = [
        loadgen.LoadShape(rate=r, burstiness=burstiness, num_requests=num, duration_s=duration, seed=seed)
        for r in _numbers(rate, float)
    ]
    return closed or opened


class EconNumbers(BaseModel):
    """--usd-per-hour, the overheads and the power options, in the bounds `margin cost` takes them."""

    model_config = ConfigDict(allow_inf_nan=False)

    usd_per_hour: Decimal | None = Field(ge=0, le=1_000_000)
    energy_overhead: Decimal = Field(ge=0, le=MAX_OVERHEAD)
    network_overhead: Decimal = Field(ge=0, le=MAX_OVERHEAD)
    power_w: float | None = Field(ge=0, le=10_000_000)
    idle_w: float | None = Field(ge=0, le=10_000_000)


def build_econ(
    usd_per_hour: Decimal | None,
    overheads: tuple[Decimal, Decimal],
    power: tuple[float | None, float | None],
    region: str | None,
    pue: float,
    usd_per_kwh: Decimal,
    price_model: str | None,
    config: Path | None,
    tco_backend: str | None,
) -> economics.EconSpec:
    from pydantic import ValidationError

    from margin.bench import economics
    from margin.config import RegionConfig, load_settings
    from margin.userfiles import validation_message

    if tco_backend is not None:
        spec = economics.spec_from_config(load_settings(config), tco_backend, price_model)
    else:
        try:
            where = RegionConfig(grid_zone=region, pue=pue, usd_per_kwh=usd_per_kwh)
        except ValidationError as exc:
            raise InvalidRequest(f"--pue/--usd-per-kwh: {validation_message(exc)}") from exc
        try:  # a negative $/h or power printed negative costs and joules; NaN and 1e400 W broke the sums
            numbers = EconNumbers(
                usd_per_hour=usd_per_hour, energy_overhead=overheads[0], network_overhead=overheads[1],
                power_w=power[0], idle_w=power[1],
            )  # fmt: skip
        except ValidationError as exc:
            raise InvalidRequest(f"--{validation_message(exc, limit=1).replace('_', '-')}") from exc
        spec = economics.EconSpec(**dict(numbers), region=where, region_label=region, price_model=price_model)
    economics.grid_for(spec)  # an unknown region, refused before the run rather than after every request
    return spec


def _progress_factory(progress: Progress) -> Callable[[str, int | None], Callable[[RequestRecord], None]]:
    def start(label: str, total: int | None) -> Callable[[RequestRecord], None]:
        task = progress.add_task(label, total=total)

        def done(record: RequestRecord) -> None:
            progress.advance(task)
            if not record.ok:
                progress.update(task, description=f"{label} [red]errors[/]")

        return done

    return start


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(console: Console, result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"margin bench: {result['model']['name']} ({result['config']['endpoint']})")
    for column in ("load", "ok/all", "req/s", "out tok/s", "goodput", "TTFT p50/p99 ms", "TPOT p50 ms", "ITL p50 ms"):
        table.add_column(column, justify="right")
    for column in ("E2E p99 ms", "busy", "$/1K tok", "J/tok", "gCO2e/1K"):
        table.add_column(column, justify="right")
    for run in result["runs"]:
        m, e = run["metrics"], run["economics"]
        usd = e["tco_usd_per_1k_tokens"] or e["list_usd_per_1k_tokens"]
        table.add_row(
            run["load"]["label"],
            f"{m['completed']}/{m['requests']}",
            _fmt(m["request_throughput"], 2),
            _fmt(m["output_throughput"]),
            _fmt(m["goodput"], 2),
            f"{_fmt(m['ttft_ms']['p50'])}/{_fmt(m['ttft_ms']['p99'])}",
            _fmt(m["tpot_ms"]["p50"], 2),
            _fmt(m["itl_ms"]["p50"], 2),
            _fmt(m["e2el_ms"]["p99"]),
            _fmt(run["utilization"]["busy_fraction"], 2),
            "-" if usd is None else f"${Decimal(usd):.6f}",
            _fmt(e["j_per_token"], 3) + ("*" if e["energy_method"] == "estimated" else ""),
            _fmt(e["co2e_g_per_1k_tokens"], 4),
        )
    console.print(table)
    first = result["runs"][0]
    console.print(
        f"tokens: output from {first['metrics']['output_tokens_source']}, input from "
        f"{first['metrics']['input_tokens_source']}; energy {first['economics']['energy_method']}"
        f" ({first['economics']['energy_detail']}); grid {first['economics']['grid_g_per_kwh']:g} g/kWh "
        f"({first['economics']['grid_source']}); client CPU {first['client']['cpu_ms_per_request']} ms/request, "
        f"loop lag p99 {first['client']['loop_lag_ms']['p99']} ms"
    )


def execute(config: BenchConfig, out: Path | None, plots: Path | None, console: Console) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from margin.bench.runner import run_bench

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        result = asyncio.run(run_bench(config, _progress_factory(bar)))
    render(console, result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        console.print(f"result: {out}")
    if plots is not None:
        from margin.bench.plots import write_plots

        for path in write_plots(result, plots):
            console.print(f"plot: {path}")
    return result


def bench(
    model: Annotated[str, Opt(help="Model name sent in each request.")],
    base_url: Annotated[str, Opt(help="OpenAI-compatible base URL (…/v1).")] = "http://127.0.0.1:8000/v1",
    api_key: Annotated[str | None, Opt(envvar="MARGIN_BENCH_API_KEY", help="Bearer key.")] = None,
    endpoint: Annotated[Literal["chat", "completions"], Opt(help="chat or completions.")] = "chat",
    concurrency: Annotated[str | None, Opt(help="Closed loop: requests in flight, e.g. 1,2,4.")] = None,
    rate: Annotated[str | None, Opt(help="Open loop: Poisson arrivals/s, e.g. 0.5,1,2 (inf = all at once).")] = None,
    burstiness: Annotated[float, Opt(help="Gamma shape of arrival gaps (1 = Poisson, <1 burstier).")] = 1.0,
    duration: Annotated[float | None, Opt(help="Seconds per load point (stop sending after).")] = None,
    num_requests: Annotated[int | None, Opt(help="Requests per load point (default 100).")] = None,
    warmup: Annotated[int, Opt(min=0, max=100_000, help="Requests sent first and excluded.")] = 2,
    dataset: Annotated[str, Opt(help="random | sharegpt | jsonl:PATH.")] = "random",
    input_len: Annotated[int, Opt(min=1, max=10_000_000, help="random: prompt tokens.")] = 128,
    output_len: Annotated[
        int | None, Opt(min=1, max=10_000_000, help="random/sharegpt: max_tokens per request.")
    ] = 128,
    range_ratio: Annotated[float, Opt(min=0, max=1, help="random: lengths uniform in len × [1−r, 1+r].")] = 0.0,
    max_tokens: Annotated[
        int | None, Opt(min=1, max=10_000_000, help="max_tokens for every request (overrides the dataset).")
    ] = None,
    ignore_eos: Annotated[bool, Opt(help="Send ignore_eos=true (vLLM, SGLang, llama.cpp server).")] = False,
    extra_body: Annotated[
        str | None, Opt(help='JSON merged into each request, e.g. \'{"logit_bias": {"2": -100}}\'.')
    ] = None,
    slo: Annotated[list[str] | None, Opt(help="Goodput SLO in ms: ttft=500, tpot=50, e2el=2000 (repeat).")] = None,
    seed: Annotated[int, Opt(help="Seed for prompts and arrivals.")] = 0,
    region: Annotated[str | None, Opt(help="Grid zone for carbon: ISO alpha-3 (FRA) or gcp:<region>.")] = None,
    pue: Annotated[float, Opt(help="Facility PUE.")] = 1.0,
    usd_per_kwh: Annotated[Decimal, Opt(help="Energy price added on top of the hourly cost.")] = Decimal(0),
    usd_per_hour: Annotated[Decimal | None, Opt(help="All-in $/hour of the serving hardware (TCO).")] = None,
    energy_overhead: Annotated[Decimal, Opt(help="Energy & cooling as a share of hourly.")] = Decimal(0),
    network_overhead: Annotated[Decimal, Opt(help="Networking as a share of hourly.")] = Decimal(0),
    power_w: Annotated[float | None, Opt(help="Busy power (W) when no meter is readable: energy estimated.")] = None,
    idle_w: Annotated[float | None, Opt(help="Idle power (W) for the estimate.")] = None,
    price_model: Annotated[str | None, Opt(help="Also price tokens at this API model's list price.")] = None,
    config: Annotated[Path | None, Opt("--config", "-c", help="margin config for --tco-backend.")] = None,
    tco_backend: Annotated[str | None, Opt(help="Take $/h, power, PUE, $/kWh and grid from this backend.")] = None,
    energy_meter: Annotated[str, Opt(help="auto | nvml | rapl | model | none.")] = "auto",
    quantization: Annotated[str | None, Opt(help="Label recorded in the result, e.g. Q4_1.")] = None,
    timeout: Annotated[float, Opt(help="Per-request timeout (s).")] = 600.0,
    out: Annotated[Path | None, Opt(help="Write the JSON result here.")] = None,
    plots: Annotated[Path | None, Opt(help="Write PNG plots into this directory.")] = None,
) -> None:
    """Serving benchmark of an OpenAI-compatible endpoint: latency, throughput, goodput, $/1K tokens, J/token, gCO2e."""
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 180)
    try:
        result = execute(make_config(dict(locals())), out, plots, console)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"--extra-body is not JSON: {exc}") from exc
    except MarginError as exc:
        raise _fail(exc.message) from exc
    failed = no_request_succeeded(result)
    if failed is not None:
        raise _fail(failed, code=1)


def no_request_succeeded(result: dict[str, Any]) -> str | None:
    """Why nothing was measured, when not one request of any load point succeeded (an unreachable URL, a wrong
    model or key): the bench then exits 1, not 0 under a table of zeros."""
    runs = result.get("runs") or []
    if any(run["metrics"]["completed"] for run in runs):
        return None
    errors = [error for run in runs for error in run.get("errors", {})]
    return "no request succeeded" + (f"; first error: {errors[0]}" if errors else "")


def make_config(o: dict[str, Any]) -> BenchConfig:
    """`margin bench`'s options (by parameter name) → a BenchConfig."""
    from margin.bench import loadgen, metrics
    from margin.bench.prompts import PromptSpec
    from margin.bench.runner import BenchConfig

    if o["energy_meter"] not in ("auto", "nvml", "rapl", "model", "none"):
        raise InvalidRequest("--energy-meter must be auto, nvml, rapl, model or none")
    body = orjson.loads(o["extra_body"]) if o["extra_body"] else {}
    if not isinstance(body, dict):
        raise InvalidRequest("--extra-body must be a JSON object")
    if not (math.isfinite(o["timeout"]) and o["timeout"] > 0):
        raise InvalidRequest("--timeout must be positive and finite")
    target = loadgen.Target(o["base_url"], o["model"], o["endpoint"], o["api_key"], o["ignore_eos"], body, o["timeout"])
    econ = build_econ(
        o["usd_per_hour"],
        (o["energy_overhead"], o["network_overhead"]),
        (o["power_w"], o["idle_w"]),
        o["region"],
        o["pue"],
        o["usd_per_kwh"],
        o["price_model"],
        o["config"],
        o["tco_backend"],
    )
    seed = o["seed"]
    return BenchConfig(
        target=target,
        shapes=build_shapes(o["concurrency"], o["rate"], o["burstiness"], o["duration"], o["num_requests"], seed),
        prompts=PromptSpec(o["dataset"], 0, seed, o["input_len"], o["output_len"], o["range_ratio"], o["max_tokens"]),
        warmup=o["warmup"],
        slos_ms=metrics.parse_slos(o["slo"] or []),
        econ=econ,
        meter=cast("MeterChoice", o["energy_meter"]),
        quantization=o["quantization"],
    )


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)
