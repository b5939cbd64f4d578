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
def routing(
    data: Annotated[
        str | None, typer.Option("--data", help="RouteLLM label folder (default: the bundled data/routing).")
    ] = None,
    learners: Annotated[
        str,
        typer.Option(
            "--learners",
            help="Comma-separated learners to compare: lr-structure, lr-ngrams, lr-minilm, lr-minilm-ngrams, "
            "knn-minilm, mlp-minilm (the MiniLM ones embed every prompt first; cached in --cache).",
        ),
    ] = "lr-structure,lr-ngrams",
    router: Annotated[str, typer.Option("--router", help="The learner reported as margin's router and shipped.")] = (
        "lr-ngrams"
    ),
    datasets: Annotated[str, typer.Option("--datasets", help="Comma-separated: mmlu,gsm8k.")] = "mmlu,gsm8k",
    k: Annotated[int, typer.Option("--k", min=2, help="Folds (MMLU: leave-subjects-out).")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Fold assignment seed.")] = 0,
    out: Annotated[str | None, typer.Option("--out", help="Write the results JSON here.")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write the PGR-vs-strong-share PNG here.")] = None,
    train_out: Annotated[str | None, typer.Option("--train-out", help="Train the router on all data, save it.")] = None,
    latency_out: Annotated[
        str | None, typer.Option("--latency-out", help="Time score() of the trained router.")
    ] = None,
    cache: Annotated[str | None, typer.Option("--cache", help="Embedding cache file (.npz).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Router quality (PGR curve, CPT(50%), CPT(80%), APGR) vs random, prompt-length and oracle, out of fold."""
    from pathlib import Path

    import orjson
    from rich.console import Console

    from margin.evals.routing import run_routing_eval
    from margin.evals.routing_view import result_tables, write_outputs
    from margin.routing.features import default_cache_dir
    from margin.routing.routellm import default_data_dir

    console = Console(highlight=False, stderr=json_out)
    data_dir = Path(data) if data else default_data_dir()
    cache_path = Path(cache) if cache else default_cache_dir() / "minilm-embeddings.npz"
    report, loaded = run_routing_eval(
        data_dir,
        learner_names=[name for name in learners.split(",") if name],
        router=router,
        datasets=[name for name in datasets.split(",") if name],
        k=k,
        seed=seed,
        cache_path=cache_path,
        progress=lambda done, total: console.print(f"embedded {done}/{total} new prompts"),
    )
    result = report.to_json()
    write_outputs(
        report,
        loaded,
        console,
        out=out,
        plot=plot,
        train_out=train_out,
        latency_out=latency_out,
        cache=cache_path,
        meta={"data": str(data_dir)},
    )
    if json_out:
        typer.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        for table in result_tables(report):
            console.print(table)


@app.command()
def cache(
    pairs: Annotated[
        str | None,
        typer.Option("--pairs", help="JSONL (or .jsonl.gz) of {a, b, duplicate} pairs (default: the bundled QQP)."),
    ] = None,
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

    from margin.evals.cache import DELTAS, default_pairs, run_cache_eval
    from margin.evals.cache_view import cache_tables

    console = Console(highlight=False, stderr=True)
    report = run_cache_eval(
        pairs or default_pairs(),
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
