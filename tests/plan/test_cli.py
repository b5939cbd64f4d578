"""`margin plan` commands end to end (typer runner, bundled catalogs)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from typer.testing import CliRunner

from margin.cli import app

runner = CliRunner()


def test_one_config_breakdown_text_and_json() -> None:
    args = [
        "plan",
        "--model",
        "llama-3.1-8b",
        "--hardware",
        "l4",
        "--weights",
        "int4",
        "--kv",
        "fp8",
        "--input",
        "1000",
        "--output",
        "200",
        "--tpot-ms",
        "80",
        "--region",
        "aws-us-east-1",
        "--rate",
        "2",
    ]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert "decode step" in text.output and "memory-bound" in text.output and "kv cache" in text.output
    data = json.loads(runner.invoke(app, [*args, "--json"]).output)
    assert data["feasible"] and data["batch_limit"] in ("tpot_slo", "memory", "engine")
    assert data["performance"]["tpot_ms"] <= 80
    assert data["performance"]["decode_step"]["bound"] == "memory"
    econ = data["economics"]
    assert Decimal(econ["usd_per_1k_tokens"]) > 0 and econ["grid_source"] == "table:USA/2023"
    assert econ["replicas"] >= 1 and 0 < econ["busy_fraction"] <= 1


def test_a_model_that_does_not_fit_is_still_broken_down() -> None:
    out = runner.invoke(app, ["plan", "--model", "llama-3.1-70b", "--hardware", "l4", "--json"])
    data = json.loads(out.output)
    assert not data["feasible"] and data["batch_limit"] == "memory"
    assert data["memory"]["weights_gb_per_device"] > data["memory"]["capacity_gb_per_device"]


def test_an_infeasible_configuration_says_so_first_and_why() -> None:
    base = ["plan", "--model", "llama-3.1-8b"]
    for args, why in (
        (["--hardware", "h200", "--input", "200000"], "200,200 tokens of context exceed the model's 131,072"),
        (["--hardware", "l4", "--batch", "1000"], "needs 174.5 GB per device, has 21.6"),
        (["--hardware", "l4", "--tpot-ms", "1"], "no batch meets the TPOT SLO"),
    ):
        out = runner.invoke(app, [*base, *args])
        assert out.exit_code == 0, out.output
        assert out.output.splitlines()[1].startswith(f"not feasible: {why}"), out.output
        data = json.loads(runner.invoke(app, [*base, *args, "--json"]).output)
        assert not data["feasible"] and data["infeasible_because"].startswith(why)
    assert "not feasible" not in runner.invoke(app, [*base, "--hardware", "l4"]).output


def test_options_that_only_price_a_region_need_one() -> None:
    for extra in (["--rate", "5"], ["--energy-overhead", "0.2"]):  # silently ignored without --region
        out = runner.invoke(app, ["plan", "--model", "llama-3.1-8b", "--hardware", "l4", *extra])
        assert out.exit_code == 2 and "give --region too" in " ".join(out.output.split()), out.output


def test_bad_input_is_an_error_not_a_traceback() -> None:
    out = runner.invoke(app, ["plan", "--model", "nope", "--hardware", "l4"])
    assert out.exit_code == 2 and "unknown model" in out.output
    out = runner.invoke(app, ["plan", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--region", "gcp-us-east1"])
    assert out.exit_code == 2 and "does not offer" in out.output
    assert runner.invoke(app, ["plan", "--model", "llama-3.1-8b"]).exit_code == 2


def test_place_prints_the_pareto_set_and_writes_a_png(tmp_path: Path) -> None:
    workload = tmp_path / "w.yaml"
    workload.write_text(
        "model: qwen2.5-7b\nrate_rps: 5\ninput_tokens: 800\noutput_tokens: 200\nslo: {ttft_ms: 2000, tpot_ms: 80}\n"
        "constraints: {jurisdictions: [EU]}\nsearch: {devices: [1, 2]}\n"
    )
    png = tmp_path / "p.png"
    out = runner.invoke(app, ["plan", "place", "--workload", str(workload), "--png", str(png), "--top", "3"])
    assert out.exit_code == 0, out.output
    assert "Pareto" in out.output and png.exists()
    data = json.loads(runner.invoke(app, ["plan", "place", "-w", str(workload), "--json"]).output)
    assert data["pareto"] and all(p["economics"]["region"].split("-")[0] for p in data["pareto"])


def test_catalog_listings() -> None:
    for what in ("hardware", "regions", "models", "formats", "efficiency"):
        assert runner.invoke(app, ["plan", "catalog", what]).exit_code == 0, what
    models = json.loads(runner.invoke(app, ["plan", "catalog", "models", "--json"]).output)
    smol = next(r for r in models["rows"] if r["key"] == "smollm2-135m")
    assert smol["kv_bytes_per_token_fp16"] == 23040
    assert runner.invoke(app, ["plan", "catalog", "gpus"]).exit_code == 2


def test_formats_and_efficiency_catalogs_are_tables_and_json_only_with_json() -> None:
    for what, heads in (
        ("formats", ("weights", "KV cache", "sources", "margin.plan.formats/1")),
        ("efficiency", ("per hardware class", "engines", "gpu-hbm", "margin.plan.efficiency/1")),
    ):
        out = runner.invoke(app, ["plan", "catalog", what])
        assert out.exit_code == 0, out.output
        assert not out.output.lstrip().startswith("{") and "┃" in out.output, out.output  # JSON before
        assert all(head in out.output for head in heads), out.output
        data = json.loads(runner.invoke(app, ["plan", "catalog", what, "--json"]).output)
        assert data["schema"] == f"margin.plan.{what}/1"


def test_validate_and_calibrate_commands(tmp_path: Path) -> None:
    data = json.loads(runner.invoke(app, ["plan", "validate", "--json"]).output)
    assert data["median_abs_error_pct"]["gpu_published"] <= 15
    bench = tmp_path / "b.json"
    run = {
        "load": {"label": "concurrency=1", "concurrency": 1},
        "metrics": {
            "completed": 2,
            "input_tokens": 200,
            "output_tokens": 64,
            "ttft_ms": {"p50": 120.0},
            "tpot_ms": {"p50": 12.0},
        },
    }
    bench.write_text(json.dumps({"schema": "margin.bench/1", "runs": [run]}))
    cal = tmp_path / "cal.yaml"
    args = [
        "plan",
        "calibrate",
        "--bench",
        str(bench),
        *[
            "--model",
            "smollm2-135m",
            "--hardware",
            "cpu-this-machine",
            "--weights",
            "gguf-q4_1",
            "--threads",
            "2",
            "--out",
        ],
        str(cal),
        "--json",
    ]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    plan = [
        "plan",
        "--model",
        "smollm2-135m",
        "--hardware",
        "cpu-this-machine",
        "--weights",
        "gguf-q4_1",
        "--engine",
        "llamacpp",
        "--threads",
        "2",
        "--input",
        "100",
        "--output",
        "32",
        "--json",
    ]
    calibrated = json.loads(runner.invoke(app, [*plan, "--calibration", str(cal)]).output)
    assert abs(calibrated["performance"]["tpot_ms"] - 12.0) < 0.5
    assert abs(calibrated["performance"]["ttft_ms"] - 120.0) < 5
    other = ["plan", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--calibration", str(cal)]
    ignored = runner.invoke(app, other)  # a calibration of another device was ignored without a word
    said = " ".join(ignored.output.split())
    assert ignored.exit_code == 2 and "calibrates cpu-this-machine, not h100-sxm" in said, ignored.output


def test_place_rejects_constraints_on_names_the_catalog_lacks(tmp_path: Path) -> None:
    base = "model: qwen2.5-7b\nrate_rps: 5\ninput_tokens: 800\noutput_tokens: 200\n"
    for constraint, word in (
        ("{hardware: [h100-pcie]}", "unknown hardware 'h100-pcie'"),
        ("{regions: [aws-mars-1]}", "unknown region 'aws-mars-1'"),
        ("{jurisdictions: [EU, UK]}", "unknown jurisdiction 'UK'"),
    ):
        workload = tmp_path / "w.yaml"
        workload.write_text(base + f"constraints: {constraint}\n")
        out = runner.invoke(app, ["plan", "place", "-w", str(workload)])
        assert out.exit_code == 2 and word in out.output.replace("\n", " "), out.output


def test_place_png_is_a_png_under_the_name_given_or_one_error_line(tmp_path: Path) -> None:
    workload = tmp_path / "w.yaml"
    workload.write_text("model: qwen2.5-7b\nrate_rps: 5\ninput_tokens: 800\noutput_tokens: 200\n")
    for name in ("pareto", "pareto.svg"):  # no suffix, another suffix: still PNG, at exactly that path
        out = runner.invoke(app, ["plan", "place", "-w", str(workload), "--png", str(tmp_path / name)])
        assert out.exit_code == 0, out.output
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    out = runner.invoke(app, ["plan", "place", "-w", str(workload), "--png", str(tmp_path / "no" / "p.png")])
    assert out.exit_code == 2 and "cannot write" in out.output, out.output
    assert runner.invoke(app, ["plan", "place", "-w", str(workload), "--top", "0"]).exit_code == 2


def test_fp8_on_an_a100_says_it_runs_weight_only_in_bf16(tmp_path: Path) -> None:
    base = ["plan", "--model", "llama-3.1-8b", "--weights", "fp8", "--input", "1000", "--output", "200"]
    a100 = runner.invoke(app, [*base, "--hardware", "a100-80gb"])
    assert a100.exit_code == 0, a100.output
    said = " ".join(a100.output.split())
    assert "a100-80gb has no fp8 units, so weight-only: fp8 storage, bf16 math at 312 TFLOPS" in said, said
    config = json.loads(runner.invoke(app, [*base, "--hardware", "a100-80gb", "--json"]).output)["config"]
    assert (config["weights_compute"], config["matmul_dtype"], config["matmul_peak_tflops"]) == ("fp8", "bf16", 312)
    assert "weight-only" not in runner.invoke(app, [*base, "--hardware", "h100-sxm"]).output  # it has fp8 units
    workload = tmp_path / "w.yaml"
    workload.write_text(
        "model: llama-3.1-8b\nrate_rps: 5\ninput_tokens: 1000\noutput_tokens: 200\n"
        "constraints: {hardware: [a100-80gb]}\nsearch: {weights: [fp8], kv: [fp16], devices: [1]}\n"
    )
    placed = runner.invoke(app, ["plan", "place", "-w", str(workload)], terminal_width=200)
    assert placed.exit_code == 0 and "fp8 (bf16 math)/fp16" in placed.output, placed.output
    formats = json.loads(runner.invoke(app, ["plan", "catalog", "formats", "--json"]).output)
    assert "weight-only" in formats["weights"]["fp8"]["note"]


def test_a_png_of_a_search_with_nothing_feasible_is_drawn(tmp_path: Path) -> None:
    """`--png` when every candidate is rejected (here: a TTFT no hardware meets) was a traceback ("Data cannot
    be log-scaled because all values are <= 0"): an empty chart that says so."""
    workload = tmp_path / "w.yaml"
    workload.write_text(
        "model: llama-3.1-8b\nrate_rps: 1\ninput_tokens: 100\noutput_tokens: 200\nslo: {ttft_ms: 0.001}\n"
        "constraints: {hardware: [l4]}\n"
    )
    png = tmp_path / "pareto.png"
    done = runner.invoke(app, ["plan", "place", "--workload", str(workload), "--png", str(png), "--json"])
    assert done.exit_code == 0 and done.exception is None, done.output
    assert json.loads(done.output)["feasible"] == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
