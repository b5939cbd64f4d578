"""`margin eval …` commands. Heavy imports stay inside the commands."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Evaluations on labelled data: routing, cache, guards.")


@app.command()
def guard(
    n: Annotated[int, typer.Option("--n", min=1, help="Number of generated PII texts.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the generated sets.")] = 7,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    gate: Annotated[bool, typer.Option("--gate", help="Exit 1 if a structured entity misses its target.")] = False,
) -> None:
    """PII recall/precision per entity, injection TPR/FPR, and scanner speed on a generated, seeded set."""
    import orjson
    from rich.console import Console

    from margin.evals.guard import run_guard_eval
    from margin.evals.guard_view import guard_tables

    report, _ = run_guard_eval(n, seed)
    if json_out:
        typer.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        console = Console(highlight=False)
        for table in guard_tables(report):
            console.print(table)
    if gate and not report.passed:
        raise typer.Exit(1)


@app.command()
def cache(
    pairs: Annotated[str, typer.Option("--pairs", help="JSONL of {a, b, duplicate} question pairs.")],
    delta: Annotated[
        list[float] | None, typer.Option("--delta", help="Target false-hit rate(s); default 0.005 0.01 0.02 0.05.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Use only the first N pairs (0 = all).")] = 0,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Number of random splits (seeds 0..n-1).")] = 1,
    calib_fraction: Annotated[float, typer.Option("--calib-fraction", help="Share of pairs to calibrate on.")] = 0.5,
    confidence: Annotated[float, typer.Option("--confidence", help="Confidence of the δ bound.")] = 0.99,
    vectors_dir: Annotated[
        str, typer.Option("--vectors-dir", help="Where embeddings are cached between runs ('' = never).")
    ] = "/tmp/margin-cache-eval",
    out: Annotated[str, typer.Option("--out", help="Write the JSON report here ('' = don't).")] = (
        "benchmarks/results/cache_eval.json"
    ),
    write_calibration: Annotated[
        str, typer.Option("--write-calibration", help="Also write the δ → threshold file here.")
    ] = "",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    gate: Annotated[bool, typer.Option("--gate", help="Exit 1 if a calibrated threshold exceeds δ on test.")] = False,
) -> None:
    """Semantic-cache hit rate and false-hit rate: calibrated thresholds per δ vs fixed cosine thresholds."""
    from pathlib import Path

    import orjson
    from rich.console import Console

    from margin.evals.cache import DELTAS, run_cache_eval
    from margin.evals.cache_view import cache_tables

    console = Console(highlight=False, stderr=True)
    report = run_cache_eval(
        pairs,
        seeds=range(seeds),
        calib_fraction=calib_fraction,
        deltas=delta or DELTAS,
        confidence=confidence,
        vectors_dir=Path(vectors_dir) if vectors_dir else None,
        limit=limit or None,
        progress=lambda done, total: console.print(f"embedded {done}/{total}"),
    )
    option = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    for path, body in ((out, report), (write_calibration, report["calibration"])):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(orjson.dumps(body, option=option) + b"\n")
    if json_out:
        typer.echo(orjson.dumps(report, option=option).decode())
    else:
        for table in cache_tables(report):
            Console(highlight=False).print(table)
    if gate and not report["all_splits_meet_delta"]:
        raise typer.Exit(1)
