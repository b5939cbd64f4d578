"""`margin kv …` commands. Heavy imports (torch, transformers) stay inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="KV-cache compression research kit (TurboQuant vs baselines).")

DEFAULT_OUT = Path("benchmarks/results/kv_eval.json")
MAX_TOKENS = 1_048_576  # a perplexity window or passkey prompt (SmolLM2 reads 8,192)
MAX_WINDOWS = 100_000


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _lengths(value: str | None) -> list[int]:
    """--passkey-lengths as token counts, each 1 to MAX_TOKENS (`abc` was a traceback, `-5` a result for -5)."""
    try:
        lengths = [int(n) for n in _split(value) or []]
    except ValueError as exc:
        raise typer.BadParameter(f"not a list of token counts: {value!r}", param_hint="--passkey-lengths") from exc
    if any(not 1 <= n <= MAX_TOKENS for n in lengths):
        raise typer.BadParameter(f"each length must be 1 to {MAX_TOKENS:,} tokens", param_hint="--passkey-lengths")
    return lengths


@app.command("eval")
def eval_command(
    out: Annotated[Path, typer.Option(help="Result JSON (markdown goes beside it).")] = DEFAULT_OUT,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes: a smoke run of every part.")] = False,
    parts: Annotated[str | None, typer.Option(help="Comma list of synthetic,attention,ppl,passkey,speed.")] = None,
    methods: Annotated[str | None, typer.Option(help="Comma list of KV methods (see `margin kv methods`).")] = None,
    ppl_methods: Annotated[str | None, typer.Option(help="Comma list of methods for perplexity.")] = None,
    ppl_windows: Annotated[int | None, typer.Option(min=1, max=MAX_WINDOWS, help="Perplexity windows.")] = None,
    ppl_skip: Annotated[
        int | None, typer.Option(min=0, max=MAX_WINDOWS, help="Corpus windows skipped before the perplexity ones.")
    ] = None,
    ppl_context: Annotated[
        int | None, typer.Option(min=2, max=MAX_TOKENS, help="Tokens per perplexity window.")
    ] = None,
    passkey_methods: Annotated[str | None, typer.Option(help="Comma list of methods for passkey.")] = None,
    passkey_lengths: Annotated[str | None, typer.Option(help="Comma list of passkey prompt lengths.")] = None,
    threads: Annotated[int, typer.Option(min=1, max=1024, help="torch CPU threads.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of rotations, sketches and synthetic data.")] = 0,
) -> None:
    """Distortion, attention fidelity, perplexity/KL, passkey and speed per KV method; JSON + markdown."""
    from margin.kv.evaluate import EvalConfig, run_eval

    cfg = EvalConfig.quick() if quick else EvalConfig()
    cfg.threads, cfg.seed = threads, seed
    cfg.parts = _split(parts) or cfg.parts
    cfg.methods = _split(methods) or cfg.methods
    cfg.ppl_methods = _split(ppl_methods) or cfg.ppl_methods
    cfg.passkey_methods = _split(passkey_methods) or cfg.passkey_methods
    cfg.ppl_windows = ppl_windows or cfg.ppl_windows
    cfg.ppl_skip = cfg.ppl_skip if ppl_skip is None else ppl_skip
    cfg.ppl_context = ppl_context or cfg.ppl_context
    cfg.passkey_lengths = _lengths(passkey_lengths) or cfg.passkey_lengths
    try:
        run_eval(cfg, out, lambda msg: typer.echo(msg, err=True))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {out} and {out.with_suffix('.md')}")


@app.command()
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Result JSONs of separate runs; later ones win per part.")],
    out: Annotated[Path, typer.Option(help="Merged result JSON (markdown goes beside it).")] = DEFAULT_OUT,
    notes: Annotated[Path | None, typer.Option(help="Markdown file of conclusions, kept in the result.")] = None,
) -> None:
    """Merge the parts of separate `margin kv eval` runs into one result and rebuild the table."""
    from margin.kv.evaluate import merge_results
    from margin.userfiles import read_text

    merge_results(inputs, out, notes=None if notes is None else read_text(notes, "notes file"))
    typer.echo(f"wrote {out} and {out.with_suffix('.md')}")


@app.command()
def codebook(
    bits: Annotated[int, typer.Option(min=1, max=8, help="Bits per coordinate.")] = 3,
    dim: Annotated[int, typer.Option(min=3, max=65_536, help="Vector dimension (head_dim).")] = 64,
    law: Annotated[str, typer.Option(help="beta (exact coordinate law) or gaussian (N(0, 1/d)).")] = "beta",
) -> None:
    """Print the Lloyd-Max codebook for one coordinate of a rotated unit vector."""
    from margin.kv.codebook import compute_codebook

    if law not in ("beta", "gaussian"):
        raise typer.BadParameter("law must be beta or gaussian")
    book = compute_codebook(bits, dim, "beta" if law == "beta" else "gaussian")
    payload = {
        "bits": bits,
        "dim": dim,
        "law": law,
        "centroids": [float(c) for c in book.centroids],
        "boundaries": [float(b) for b in book.boundaries],
        "centroids_times_sqrt_d": [float(c) * dim**0.5 for c in book.centroids],
        "d_mse_unit_vector": book.d_mse,
        "iterations": book.iterations,
    }
    typer.echo(json.dumps(payload, indent=2))


@app.command("bytes")
def bytes_command(
    head_dim: Annotated[int, typer.Option(min=8, max=512, help="Head dimension.")] = 64,
    layers: Annotated[int, typer.Option(min=1, max=1024, help="Decoder layers.")] = 30,
    kv_heads: Annotated[int, typer.Option(min=1, max=128, help="KV heads per layer.")] = 3,
    methods: Annotated[str | None, typer.Option(help="Comma list of KV methods.")] = None,
) -> None:
    """Measured KV bytes per token per method (defaults: SmolLM2-135M), as JSON for `margin plan`."""
    from margin.kv.methods import DEFAULT_METHODS, get_method, measured_bytes_per_token

    names = _split(methods) or list(DEFAULT_METHODS)
    try:
        chosen = [get_method(n) for n in names]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    dims = {"head_dim": head_dim, "num_layers": layers, "kv_heads": kv_heads}
    try:
        rows = {m.name: measured_bytes_per_token(m, **dims) for m in chosen}
    except ValueError as exc:  # a head dimension a method cannot pack (tq-*: a multiple of 8)
        raise typer.BadParameter(str(exc), param_hint="--head-dim") from exc
    typer.echo(json.dumps({"model_shape": dims, "bytes_per_token": rows}, indent=2))


@app.command("methods")
def methods_command() -> None:
    """List the KV method names."""
    from margin.kv import methods as registry

    typer.echo((registry.__doc__ or "").strip())
    typer.echo("\ndefault set: " + ", ".join(registry.DEFAULT_METHODS))
