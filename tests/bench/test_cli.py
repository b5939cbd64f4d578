"""`margin bench` end to end against margin with the fake backend (uvicorn in a thread): the JSON result,
its schema, the economics from a config backend, and the plots."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from margin.app import build_app
from margin.cli import app
from tests.helpers import fake_settings, free_port, server_logging_kept

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@contextmanager
def threaded(asgi: Any) -> Iterator[str]:
    port = free_port()
    with server_logging_kept():
        server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.should_exit = True
            thread.join(timeout=20)


@pytest.fixture
def margin_url(tmp_path: Path) -> Iterator[str]:
    fake = {
        "kind": "fake",
        "output_tokens": 6,
        "ttft_ms": 10,
        "tokens_per_s": 500,
        "region": "eu",
        "hardware": {"usd_per_hour": "3.60", "watts_busy": 100},
    }
    with threaded(build_app(fake_settings(tmp_path / "l.db", backends={"fake": fake}))) as url:
        yield url


def test_bench_writes_result_and_plots(margin_url: str, tmp_path: Path) -> None:
    out, plots = tmp_path / "r.json", tmp_path / "plots"
    args = [
        "bench",
        "--base-url",
        margin_url,
        "--model",
        "fake-chat",
        "--concurrency",
        "1,2",
        "--num-requests",
        "6",
        "--warmup",
        "1",
        "--input-len",
        "8",
        "--output-len",
        "6",
        "--slo",
        "ttft=5000",
        "--slo",
        "tpot=1000",
        "--usd-per-hour",
        "3.60",
        "--power-w",
        "100",
        "--region",
        "FRA",
        "--energy-meter",
        "model",
        "--price-model",
        "gpt-4o-mini",
        "--out",
        str(out),
        "--plots",
        str(plots),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "concurrency=2" in result.output and "$/1K" in result.output
    data = orjson.loads(out.read_bytes())
    assert data["schema"] == "margin.bench/1" and len(data["config_hash"]) == 16
    assert data["warmup"] == {"requests": 1, "failed": 0, "duration_s": data["warmup"]["duration_s"]}
    assert data["model"]["server"]["models"] and "fake-chat" in data["model"]["server"]["models"]
    assert set(data["versions"]) >= {"python", "margin", "aiohttp"} and data["hardware"]["server_on_client_host"]
    assert [run["load"]["concurrency"] for run in data["runs"]] == [1, 2]
    for run in data["runs"]:
        m, e = run["metrics"], run["economics"]
        assert m["completed"] == 6 and m["failed"] == 0 and m["output_tokens"] == 36
        assert m["output_tokens_source"] == "usage" and m["good_requests"] == 6
        assert m["ttft_ms"]["p50"] >= 8 and m["tpot_ms"]["p50"] is not None
        assert len(run["requests"]) == 6 and all(len(r["chunk_s"]) == 6 for r in run["requests"])
        assert e["energy_method"] == "estimated" and e["j_per_token"] > 0 and e["co2e_g_per_1k_tokens"] > 0
        assert float(e["tco_usd_per_1k_tokens"]) > 0 and e["list_price_version"].startswith("genai-prices")
        assert run["client"]["max_in_flight"] <= run["load"]["concurrency"]
    assert data["price_version"].startswith("genai-prices")
    for name in ("latency_cdf.png", "sweep.png"):
        assert (plots / name).read_bytes().startswith(PNG)


def test_bench_takes_economics_from_a_config_backend(margin_url: str, tmp_path: Path) -> None:
    config = tmp_path / "margin.yaml"
    settings = fake_settings(tmp_path / "x.db").model_dump(mode="json", exclude_none=True)
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "r.json"
    args = [
        "bench",
        "--base-url",
        margin_url,
        "--model",
        "fake-chat",
        "--rate",
        "inf",
        "--num-requests",
        "4",
        "--warmup",
        "0",
        "--config",
        str(config),
        "--tco-backend",
        "fake",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    econ = orjson.loads(out.read_bytes())["runs"][0]["economics"]
    assert econ["inputs"]["source"] == "config backend 'fake'" and econ["inputs"]["pue"] == 1.2
    assert econ["grid_source"].startswith("table:FRA") and econ["tco_usd_per_1k_tokens"] is not None


def test_bench_rejects_bad_options() -> None:
    both = runner.invoke(app, ["bench", "--model", "m", "--rate", "1", "--concurrency", "1"])
    assert both.exit_code == 2 and "not both" in both.output
    neither = runner.invoke(app, ["bench", "--model", "m"])  # said "not both" too
    assert neither.exit_code == 2 and "one of them is needed" in " ".join(neither.output.split())
    slo = runner.invoke(app, ["bench", "--model", "m", "--rate", "1", "--slo", "x=1"])
    assert slo.exit_code == 2 and "bad SLO" in slo.output


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--slo", "ttft=abc"], "bad SLO"),  # a ValueError traceback
        (["--slo", "tpot=-5"], "bad SLO"),  # goodput against a negative bound: nothing ever met it
        (["--slo", "e2el=nan"], "bad SLO"),
        (["--region", "MARS"], "unknown region 'MARS'"),  # refused only after every request had been sent
        (["--usd-per-hour", "-1"], "--usd-per-hour"),  # a negative $/1K tokens
        (["--power-w", "-5"], "--power-w"),  # negative joules
        (["--idle-w", "1e400"], "--idle-w"),
        (["--energy-overhead", "-0.5", "--usd-per-hour", "1"], "--energy-overhead"),
    ],
)
def test_bench_refuses_bad_economics_and_slos_before_sending_anything(
    margin_url: str, tmp_path: Path, option: list[str], says: str
) -> None:
    out = tmp_path / "r.json"
    args = ["bench", "--base-url", margin_url, "--model", "fake-chat", "--concurrency", "1", "--num-requests", "2"]
    result = runner.invoke(app, [*args, "--warmup", "0", "--out", str(out), *option])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and says in said and isinstance(result.exception, SystemExit), result.output
    assert not out.exists() and "concurrency=1" not in said  # no load point ran
