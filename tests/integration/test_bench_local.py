"""`margin bench` as a user runs it: a subprocess against `margin serve` with the real SmolLM2 model on
llama.cpp. The JSON result must be valid (schema, raw timestamps, tokens from usage, economics from the
config's `local` backend) and the plots must be PNG files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import margin_serve

pytestmark = pytest.mark.integration
NO_EOS = '{"logit_bias": {"2": -100, "0": -100}}'  # SmolLM2's end tokens: every answer runs to max_tokens


@pytest.fixture(scope="module")
def serve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("bench-serve")
    with margin_serve(root / "ledger.db", root / "serve.log") as (url, _):
        yield f"{url}/v1"


def test_bench_against_margin_serve_with_the_local_model(serve_url: str, tmp_path: Path) -> None:
    out, plots = tmp_path / "bench.json", tmp_path / "plots"
    command = [sys.executable, "-m", "margin", "bench", "--base-url", serve_url, "--model", "local"]
    command += ["--concurrency", "1,2", "--num-requests", "4", "--warmup", "1", "--input-len", "16"]
    command += ["--output-len", "12", "--extra-body", NO_EOS, "--slo", "ttft=60000", "--tco-backend", "local"]
    command += ["--quantization", "Q4_1", "--out", str(out), "--plots", str(plots)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "concurrency=2" in done.stdout
    result = json.loads(out.read_text())
    assert result["schema"] == "margin.bench/1" and result["config"]["model"] == "local"
    assert result["model"]["quantization"] == "Q4_1" and "smollm2-135m-instruct" in result["model"]["server"]["models"]
    assert result["price_version"] == "tco:config backend 'local'"
    for run in result["runs"]:
        m, econ = run["metrics"], run["economics"]
        assert (m["completed"], m["failed"]) == (4, 0)
        assert m["output_tokens"] == 4 * 12 and m["output_tokens_source"] == "usage"
        assert m["input_tokens_source"] == "usage" and m["input_tokens"] > 4 * 16
        assert 0 < m["ttft_ms"]["p50"] <= m["e2el_ms"]["p50"]
        assert m["tpot_ms"]["p50"] > 0 and m["itl_ms"]["p50"] > 0 and m["good_requests"] == 4
        assert m["output_throughput"] > 0
        assert all(len(r["chunk_s"]) >= 1 and r["output_tokens"] == 12 for r in run["requests"])
        assert econ["grid_g_per_kwh"] == 475.0 and econ["energy_method"] in ("estimated", "measured:rapl")
        assert float(econ["tco_usd_per_1k_tokens"]) > 0 and econ["j_per_token"] > 0
        assert econ["co2e_g_per_1k_tokens"] > 0
        assert run["client"]["max_in_flight"] <= run["load"]["concurrency"]
    for name in ("latency_cdf.png", "sweep.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG"
