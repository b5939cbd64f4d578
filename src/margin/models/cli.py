"""`margin models …` commands. Heavy imports stay inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, help="Local model files: quantization variants of a GGUF.")

DEFAULT_OUT = Path("~/.cache/margin/models")


def gateway_config(variants: list[Any], threads: int | None) -> dict[str, Any]:
    """A `margin serve` config with one llama.cpp backend and one model per variant (`smollm2-<type>`),
    priced and powered like the default local backend (the same labelled assumptions)."""
    import yaml

    from margin.config import default_config_text

    default = yaml.safe_load(default_config_text())
    local = default["backends"]["local"]
    backends, models = {}, {}
    for variant in variants:
        key = variant.name.lower()
        backend: dict[str, Any] = {**local, "hardware": dict(local["hardware"]), "model_file": variant.path}
        backend["n_ctx"] = 2048
        if threads:
            backend["threads"] = threads
        backends[f"local-{key}"] = backend
        models[f"smollm2-{key}"] = {"backend": f"local-{key}", "context_length": 2048, "owned_by": "HuggingFaceTB"}
    return {
        "server": default["server"],
        "storage": {"ledger": "sqlite:///margin.db", "flush_interval_ms": 20},
        "regions": default["regions"],
        "backends": backends,
        "models": models,
    }


@app.command()
def quantize(
    types: Annotated[
        str, typer.Option("--types", help="Comma-separated llama.cpp types (Q8_0, Q6_K, Q4_K_M, Q3_K, Q2_K, Q4_0…).")
    ] = "Q8_0,Q4_K_M,Q3_K_M,Q2_K",
    source: Annotated[str, typer.Option("--source", help="GGUF to start from (path or builtin:<name>).")] = (
        "builtin:smollm2-135m-q4_1"
    ),
    out: Annotated[Path, typer.Option("--out", help="Folder for the GGUF files (never inside git).")] = DEFAULT_OUT,
    prefix: Annotated[str, typer.Option("--prefix", help="File name prefix.")] = "smollm2-135m",
    threads: Annotated[int, typer.Option("--threads", min=1, help="Quantizer and load-test threads.")] = 2,
    config_out: Annotated[
        Path | None, typer.Option("--config-out", help="Also write a `margin serve` config serving every variant.")
    ] = None,
    no_measure: Annotated[bool, typer.Option("--no-measure", help="Skip timing each file's load.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Write an F16 GGUF dequantized from SOURCE (the `gguf` package), then quantize it to each type with
    llama.cpp. The manifest (models.json: sizes, sha256, time to make and to load) goes beside the files.
    Quality is bounded by the source: from the shipped Q4_1, no variant can be better than Q4_1."""
    from dataclasses import replace

    import orjson
    import yaml
    from rich.console import Console
    from rich.table import Table

    from margin.backends.llamacpp import resolve_model_file
    from margin.errors import MarginError
    from margin.models.quantize import make_variants, manifest, source_variant

    console = Console(highlight=False, stderr=json_out)
    try:
        source_path = resolve_model_file(source)
        kinds = [t.strip() for t in types.split(",") if t.strip()]
        variants = make_variants(
            source_path, out.expanduser(), kinds, threads=threads, prefix=prefix, measure=not no_measure
        )
        original = source_variant(source_path, threads, measure=not no_measure)
        variants.insert(0, replace(original, path=source) if source.startswith("builtin:") else original)
    except MarginError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(2) from exc
    body = manifest(source_path, variants)
    (out.expanduser() / "models.json").write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    if config_out is not None:
        config_out.parent.mkdir(parents=True, exist_ok=True)
        config_out.write_text(yaml.safe_dump(gateway_config(variants, threads), sort_keys=False), encoding="utf-8")
        console.print(f"wrote the gateway config {config_out}")
    if json_out:
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("variant", "MB", "made in s", "loads in s", "file")
    for v in variants:
        load = "-" if v.load_s is None else f"{v.load_s:.2f}"
        made = "kept" if v.make_s is None else f"{v.make_s:.1f}"
        table.add_row(v.name, f"{v.bytes / 1e6:.1f}", made, load, v.path)
    console.print(table)
    console.print("quality is bounded by the source (every variant comes from an F16 of it)")
