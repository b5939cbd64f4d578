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
