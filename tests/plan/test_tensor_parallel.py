"""`margin plan` refuses a model split over devices that its attention heads do not divide (vLLM's rule, its
QKVParallelLinear: heads % devices == 0, and KV heads divisible by the devices or the devices by the KV heads,
which are then copied). Before, qwen2.5-7b (28 heads) on 8 devices and smollm2-135m (9 heads, 3 KV) on 2 were
planned and priced, configurations no engine loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from margin.cli import app
from margin.plan.catalog import Catalog
from margin.plan.perf import tensor_parallel_problem

runner = CliRunner()


@pytest.mark.parametrize(
    ("model", "devices", "problem"),
    [
        ("qwen2.5-7b", 8, "28 attention heads do not divide over 8 devices"),
        ("smollm2-135m", 2, "9 attention heads do not divide over 2 devices"),
        ("smollm2-135m", 9, None),  # 9 heads on 9 devices, each of the 3 KV heads copied to 3
        ("llama-3.1-8b", 8, None),  # 32 heads, 8 KV: one KV head per device
        ("llama-3.1-70b", 16, None),  # 64 heads, 8 KV heads each copied to 2 devices
        ("qwen2.5-7b", 4, None),  # 28 / 4, KV 4 / 4
        ("qwen2.5-7b", 2, None),
        ("llama-3.1-8b", 1, None),
    ],
)
def test_the_rule(catalog: Catalog, model: str, devices: int, problem: str | None) -> None:
    found = tensor_parallel_problem(catalog.get_model(model), devices)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_kv_heads_that_neither_divide_nor_are_divided(catalog: Catalog) -> None:
    gqa = catalog.get_model("llama-3.1-8b").model_copy(update={"heads": 24, "kv_heads": 6})
    assert tensor_parallel_problem(gqa, 3) is None and tensor_parallel_problem(gqa, 12) is None  # 6/3; 12/6
    found = tensor_parallel_problem(gqa, 4)  # 24 / 4 query heads, but 6 KV heads on 4 devices
    assert found is not None and "6 KV heads neither divide over 4 devices nor 4 devices over them" in found


def test_one_config_is_refused(tmp_path: Path) -> None:
    args = ["plan", "--model", "qwen2.5-7b", "--hardware", "h100-sxm", "--devices", "8", "--weights", "bf16"]
    refused = runner.invoke(app, args)
    text = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "cannot run: 28 attention heads do not divide over 8 devices" in text, text
    assert runner.invoke(app, [*args[:-3], "4"]).exit_code == 0


def test_placement_skips_such_candidates_and_says_so(tmp_path: Path) -> None:
    workload = tmp_path / "w.yaml"
    workload.write_text(
        "model: qwen2.5-7b\nrate_rps: 2\ninput_tokens: 500\noutput_tokens: 100\n"
        "search: {weights: [bf16], kv: [fp16], devices: [1, 2, 4, 8]}\nconstraints: {hardware: [h100-sxm]}\n"
    )
    done = runner.invoke(app, ["plan", "place", "--workload", str(workload), "--json", "--top", "100"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    devices = {option["config"]["devices"] for option in result["cheapest"]}
    assert 8 not in devices and devices, devices
    assert result["rejected"]["heads_not_divisible"] > 0, result["rejected"]
    text = runner.invoke(app, ["plan", "place", "--workload", str(workload)])
    assert "heads_not_divisible" in text.output
