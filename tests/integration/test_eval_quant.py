"""The quantization path on the real SmolLM2-135M: `margin models quantize` into a temp folder (F16 from
the shipped Q4_1 with gguf, Q8_0 with llama.cpp), perplexity/KL of the variants, and a small `margin eval
run` of two variants through `margin serve` (cost from the gateway, energy from the ledger), then a gate."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from margin.backends.llamacpp import resolve_model_file
from margin.cli import app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("models")
    command = [sys.executable, "-m", "margin", "models", "quantize", "--types", "Q8_0", "--out", str(out)]
    command += ["--config-out", str(out / "margin.yaml"), "--threads", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    yield out


def test_quantize_writes_f16_and_q8_0_with_a_manifest(quantized: Path) -> None:
    import gguf

    manifest = json.loads((quantized / "models.json").read_text())
    names = [v["name"] for v in manifest["variants"]]
    assert names == ["Q4_1", "F16", "Q8_0"]
    sizes = {v["name"]: v["bytes"] for v in manifest["variants"]}
    assert sizes["F16"] > sizes["Q8_0"] > sizes["Q4_1"]
    assert all(v["load_s"] > 0 for v in manifest["variants"])
    made = {v["name"]: v["make_s"] for v in manifest["variants"]}
    assert made["Q4_1"] is None and made["F16"] > 0 and made["Q8_0"] > 0  # the source is kept, not made
    source, f16 = (
        gguf.GGUFReader(resolve_model_file("builtin:smollm2-135m-q4_1")),
        gguf.GGUFReader(quantized / "smollm2-135m-f16.gguf"),
    )
    assert {t.tensor_type.name for t in f16.tensors} == {"F16", "F32"}
    assert len(f16.tensors) == len(source.tensors)
    want = next(t for t in source.tensors if t.name == "blk.0.ffn_up.weight")
    got = next(t for t in f16.tensors if t.name == "blk.0.ffn_up.weight")
    expected = gguf.quants.dequantize(want.data, want.tensor_type)
    assert np.allclose(np.asarray(got.data, dtype=np.float32), expected, atol=1e-3, rtol=1e-3)
    assert f16.fields["tokenizer.chat_template"].contents() == source.fields["tokenizer.chat_template"].contents()


def test_perplexity_and_kl_against_the_f16_reference(quantized: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("The cat sat on the mat. The dog lay by the door and watched the rain fall on the garden. " * 30)
    out = tmp_path / "ppl.json"
    args = ["eval", "perplexity", "--reference", "F16", "--tokens", "128", "--ctx", "64", "--text", str(text)]
    args += ["--model", f"F16={quantized / 'smollm2-135m-f16.gguf'}", "--model", "Q4_1=builtin:smollm2-135m-q4_1"]
    args += ["--model", f"Q8_0={quantized / 'smollm2-135m-q8_0.gguf'}", "--out", str(out)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    models = json.loads(out.read_text())["models"]
    assert models["F16"]["kl"] == 0 and models["F16"]["top1_agreement"] == 1
    assert 1 < models["F16"]["perplexity"] < 100  # repetitive English: the model predicts it well
    for name in ("Q4_1", "Q8_0"):  # F16 holds Q4_1's values: both stay close to it
        assert 0 <= models[name]["kl"] < 0.1 and models[name]["top1_agreement"] > 0.8


def test_eval_run_of_two_quantizations_through_margin_serve(quantized: Path, tmp_path: Path) -> None:
    spec = {
        "name": "quant-it",
        "suite": "builtin:smol-basics",
        "limit": 4,
        "baseline": "q4_1",
        "target": {"serve_config": str(quantized / "margin.yaml")},
        "defaults": {"max_tokens": 8, "temperature": 0},
        "variants": [
            {"name": "q4_1", "model": "smollm2-q4_1", "quantization": "Q4_1"},
            {"name": "q8_0", "model": "smollm2-q8_0", "quantization": "Q8_0"},
        ],
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = tmp_path / "run"
    done = CliRunner().invoke(app, ["eval", "run", str(path), "--out", str(run)])
    assert done.exit_code == 0, done.output
    results = json.loads((run / "results.json").read_text())
    for variant in results["variants"]:
        assert variant["n"] == 4 and variant["errors"] == 0 and variant["ledger_rows"] == 4
        assert variant["cost"]["source"] == "gateway" and float(variant["cost"]["per_item_usd"]) > 0
        assert variant["energy_j_per_item"] > 0 and variant["co2e_g_per_item"] > 0
        assert variant["latency_ms"]["ttft"]["p50"] > 0 and variant["tokens"]["output"] > 0
    assert results["comparisons"]["q8_0"]["n"] == 4
    assert (run / "pareto.png").read_bytes()[:4] == b"\x89PNG" and "| q4_1" in (run / "report.md").read_text()
    gate = CliRunner().invoke(app, ["eval", "gate", str(run), "--baseline", "q4_1", "--slo", "error_rate=0"])
    assert gate.exit_code == 0, gate.output
