from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from margin.cli import app
from margin.routing.learned import LearnedRouter
from margin.routing.routellm import STRONG_COLUMN, WEAK_COLUMN

runner = CliRunner()


def write_dataset(root: Path) -> None:
    """Synthetic labels where the weak model fails long, number-heavy prompts (a learnable signal)."""
    for name, files in (("mmlu", [f"mmlu_s{i}.csv" for i in range(6)]), ("gsm8k", ["gsm8k_responses.csv"])):
        folder = root / name
        folder.mkdir(parents=True)
        for index, filename in enumerate(files):
            with (folder / filename).open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["prompt", WEAK_COLUMN, STRONG_COLUMN])
                for i in range(40):
                    hard = i % 3 == 0
                    text = f"topic {index} item {i}: " + (
                        "compute 17 * 23 + 5 / 9 then 42 - 8" * 3 if hard else "name it"
                    )
                    writer.writerow([text, str(not hard), str(hard or i % 5 != 0)])


def test_eval_routing_writes_results_plot_and_router(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data")
    out, png, model, latency = (tmp_path / n for n in ("r.json", "r.png", "router.npz", "lat.json"))
    args = ["eval", "routing", "--data", str(tmp_path / "data"), "--learners", "lr-structure,lr-ngrams"]
    args += ["--router", "lr-ngrams", "--k", "3", "--out", str(out), "--plot", str(png)]
    args += ["--train-out", str(model), "--latency-out", str(latency), "--cache", str(tmp_path / "c.npz")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "prompt-length" in result.output and "APGR" in result.output
    report = json.loads(out.read_text())
    for name in ("mmlu", "gsm8k"):
        methods = report["datasets"][name]["methods"]
        assert set(methods) == {"random", "prompt-length", "oracle", "margin"}
        assert methods["random"]["apgr"] == 0.5 and methods["random"]["cpt50"] == 0.5
        assert methods["margin"]["apgr"] > 0.8  # the synthetic signal is easy
        assert len(methods["margin"]["curve"]["pgr"]) == 101
        assert set(report["datasets"][name]["learners"]) == {"lr-structure", "lr-ngrams"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    router = LearnedRouter.load(model)
    assert router.meta["trained_on"] == {"gsm8k": 40, "mmlu": 240}
    assert router.p_weak_ok("topic 1 item 3: name it") > router.p_weak_ok("compute 17 * 23 + 5 / 9 then 42 - 8" * 3)
    assert json.loads(latency.read_text())["p50_ms"] > 0


def test_eval_routing_rejects_unknown_learner(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data")
    result = runner.invoke(app, ["eval", "routing", "--data", str(tmp_path / "data"), "--learners", "svm"])
    assert result.exit_code != 0


def test_eval_routing_with_no_dataset_is_an_error(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data")
    result = runner.invoke(app, ["eval", "routing", "--data", str(tmp_path / "data"), "--datasets", ""])
    assert result.exit_code == 2 and "no routing dataset" in result.output, result.output  # was exit 0, nothing
