"""`margin eval …` commands. Heavy imports stay inside the commands."""

from __future__ import annotations

from typing import Annotated, Any

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


RunDir = Annotated[str, typer.Argument(help="The run folder (records.jsonl, results.json, …).")]


def _fail(said: str, code: int = 2) -> typer.Exit:
    """One `error:` line, its text literal (a model's or an upstream's words in it are not rich markup)."""
    from margin.terminal import print_error

    print_error(said)
    return typer.Exit(code)


@app.command()
def run(
    experiment: Annotated[str, typer.Argument(help="Experiment YAML (suite, target, variants).")],
    out: Annotated[str, typer.Option("--out", help="Run folder; an existing one of the same experiment resumes.")],
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report when done.")] = True,
) -> None:
    """Ask every item of the suite with every variant through the target, grade the answers and record them
    (resumable); then summarize with intervals, paired comparisons, cost, energy and carbon per item.

    Exit 0: done (failed requests score 0 and are counted in the report: gate on them with --slo error_rate=…);
    1: every request of the run failed (the report is still written); 2: a bad experiment, suite or run folder."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from margin.errors import MarginError
    from margin.evals.experiment import load_experiment
    from margin.evals.report import write_report
    from margin.evals.runner import run_experiment

    console = Console(highlight=False, stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def update(variant: str, done: int, total: int) -> None:
            if variant not in tasks:
                tasks[variant] = progress.add_task(variant, total=total)
            progress.update(tasks[variant], completed=done)

        try:
            results = run_experiment(load_experiment(Path(experiment)), Path(out), update)
        except MarginError as exc:
            raise _fail(exc.message) from exc
    if report:
        for path in write_report(results, Path(out)):
            console.print(f"wrote {path}")
    _print_table(results)
    if (failed := _all_failed(results)) is not None:
        raise _fail(failed, code=ALL_FAILED_EXIT)


ALL_FAILED_EXIT = 1  # `eval run`: not one request of the run was answered


def _all_failed(results: dict[str, Any]) -> str | None:
    """What to say when every request of every variant failed (nothing was measured); None otherwise."""
    from margin.evals.gate import all_failed

    variants = results["variants"]
    if not variants or not all(all_failed(v) for v in variants):
        return None
    asked = sum(int(v["n"]) for v in variants)
    first = next((v["first_error"] for v in variants if v.get("first_error")), None)
    return f"every one of the {asked} requests failed (first: {first}); nothing was measured"


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from margin.evals.report import COLUMNS, notes, rows

    keep = [0, 1, 2, 3, 5, 7, 10, 12]  # the terminal gets the main columns; report.md has them all
    table = Table(*(COLUMNS[i] for i in keep), title=f"eval: {results['experiment']}")
    for row in rows(results):
        table.add_row(*(row[i] for i in keep))
    console = Console(highlight=False)
    console.print(table)
    for note in notes(results):
        console.print(f"- {note}", markup=False)


@app.command("report")
def report_cmd(
    run_dir: RunDir,
    baseline: Annotated[str | None, typer.Option("--baseline", help="Compare against this variant instead.")] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Folder for report.md/html + pareto.png (default: RUN).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results JSON.")] = False,
) -> None:
    """Markdown + HTML table and a Pareto PNG (quality vs $ per successful task) for a run (finished or not)."""
    from pathlib import Path

    import orjson

    from margin.errors import MarginError
    from margin.evals.report import write_report
    from margin.evals.summary import load_run

    try:
        results = load_run(Path(run_dir), baseline)
    except MarginError as exc:
        raise _fail(exc.message) from exc
    target = Path(out) if out else Path(run_dir)
    (target / "results.json").parent.mkdir(parents=True, exist_ok=True)
    (target / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    written = write_report(results, target)
    if json_out:
        typer.echo(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        return
    _print_table(results)
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("gate")
def gate_cmd(
    run_dir: RunDir,
    baseline: Annotated[str, typer.Option("--baseline", help="The variant in production today.")],
    candidate: Annotated[
        list[str] | None, typer.Option("--candidate", help="Variant(s) to gate (default: all but the baseline).")
    ] = None,
    max_cost_increase: Annotated[
        str | None, typer.Option("--max-cost-increase", help="e.g. 5% (of $ per successful task).")
    ] = None,
    max_quality_drop: Annotated[
        float | None,
        typer.Option(
            "--max-quality-drop",
            help="Percentage points of score a candidate may lose (paired, 95% CI); negative: the gain it must "
            "show (-1: at least 1 point better, the interval's lower end included).",
        ),
    ] = None,
    slo: Annotated[
        list[str] | None, typer.Option("--slo", help="ttft_p95_ms=800, e2e_p95_ms=…, error_rate=0.01")
    ] = None,
    cost_per: Annotated[str, typer.Option("--cost-per", help="success|item: the cost the cost rule compares.")] = (
        "success"
    ),
    slo_baseline: Annotated[bool, typer.Option("--slo-baseline", help="Hold the baseline to the SLOs too.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the rules as JSON.")] = False,
) -> None:
    """Exit 0 when every rule holds for every candidate, 1 when one fails (2 on a usage error). Each rule is
    printed with its measured values and intervals. In CI: run the experiment, then this, as plain steps."""
    from pathlib import Path

    from margin.errors import MarginError
    from margin.evals.gate import evaluate, parse_share, parse_slos
    from margin.evals.summary import load_run

    if cost_per not in ("success", "item"):
        raise _fail("--cost-per is success or item")
    try:
        results = load_run(Path(run_dir), baseline)
        rules = evaluate(
            results,
            baseline,
            max_cost_increase=parse_share(max_cost_increase) if max_cost_increase else None,
            max_quality_drop=max_quality_drop,
            slos=parse_slos(slo or []),
            cost_per=cost_per,
            candidates=candidate,
            slo_baseline=slo_baseline,
        )
    except MarginError as exc:
        raise _fail(exc.message) from exc
    if not rules and (max_cost_increase or max_quality_drop is not None or slo):  # said "no rule given"
        names = ", ".join(str(v.get("variant")) for v in results.get("variants", []))
        raise _fail(f"no candidate to gate besides the baseline {baseline!r} (variants of this run: {names})")
    if not rules:
        raise _fail("no rule given: use --max-cost-increase, --max-quality-drop and/or --slo")
    if not _print_rules(rules, json_out):
        raise typer.Exit(1)


def _print_rules(rules: list[Any], json_out: bool) -> bool:
    import orjson
    from rich.console import Console

    passed = all(rule.passed for rule in rules)
    if json_out:
        typer.echo(orjson.dumps({"passed": passed, "rules": [r.to_json() for r in rules]}).decode())
        return passed
    console = Console(highlight=False)
    for rule in rules:
        mark = "[green]PASS[/]" if rule.passed else "[bold red]FAIL[/]"
        console.print(f"{mark} {rule.variant}: {rule.rule} — {rule.measured}")
    console.print("gate passed" if passed else "[bold red]gate failed[/]")
    return passed


@app.command()
def perplexity(
    model: Annotated[list[str], typer.Option("--model", help="NAME=GGUF path or NAME=builtin:<name>; repeat.")],
    reference: Annotated[str, typer.Option("--reference", help="The NAME the others are compared with (KL).")],
    tokens: Annotated[int, typer.Option("--tokens", min=2, help="Tokens of text to score (whole windows).")] = 2048,
    ctx: Annotated[int, typer.Option("--ctx", min=2, help="Window length in tokens.")] = 256,
    threads: Annotated[int, typer.Option("--threads", min=1, help="llama.cpp threads.")] = 2,
    text: Annotated[str | None, typer.Option("--text", help="A text file (default: ShareGPT from its wheel).")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Write the JSON here.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
) -> None:
    """Perplexity of each GGUF variant and KL(reference ‖ variant) of next-token distributions, on the same
    offline text (llama.cpp directly: the gateway's API has no logprobs for the local backend)."""
    from pathlib import Path

    import orjson
    from rich.console import Console
    from rich.table import Table

    from margin.errors import MarginError
    from margin.evals.perplexity import parse_models, run_perplexity

    try:
        result = run_perplexity(
            parse_models(model),
            reference,
            tokens=tokens,
            ctx=ctx,
            threads=threads,
            text_file=Path(text) if text else None,
            seed=seed,
        )
    except MarginError as exc:
        raise _fail(exc.message) from exc
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    table = Table("model", "perplexity [95% CI]", f"KL vs {reference} (nats)", "top-1 agreement")
    for name, m in result["models"].items():
        low, high = m["perplexity_ci"]
        table.add_row(
            name, f"{m['perplexity']:.3f} [{low:.3f}, {high:.3f}]", f"{m['kl']:.5f}", f"{m['top1_agreement']:.3f}"
        )
    Console(highlight=False).print(table)
