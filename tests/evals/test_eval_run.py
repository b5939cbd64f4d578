"""`margin eval run|report|gate` end to end against `margin serve` (fake backends, so answers and grades
are known): ledger-priced cost, energy from the ledger rows, judge grading, paired comparisons, the report
files, gate decisions, resume after an interruption, and a direct (non-margin) target priced per token."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from margin.cli import app
from margin.evals.client import Endpoint, chat
from margin.evals.experiment import load_experiment
from margin.evals.gateway import serve
from margin.evals.runner import run_experiment

GATEWAY = {
    "regions": {"eu": {"grid_g_per_kwh": 100, "pue": 1.2, "usd_per_kwh": "0.20"}},
    "backends": {
        "echo": {
            "kind": "fake",
            "echo": True,
            "output_tokens": 4,
            "tokens_per_s": 400,
            "region": "eu",
            "hardware": {"usd_per_hour": "3.60", "watts_busy": 100},
        },
        "words": {"kind": "fake", "word": "nope", "output_tokens": 2},
        "judge": {"kind": "fake", "word": "Rating: [[8]]", "output_tokens": 1},
    },
    "models": {
        "echo-model": {"backend": "echo"},
        "words-model": {"backend": "words", "price": {"input": "100", "output": "200", "version": "t"}},
        "judge-model": {"backend": "judge", "price": {"input": "1", "output": "1", "version": "t"}},
    },
}
ITEMS = [
    {"id": "n1", "prompt": "12 is it", "expected": 12, "grader": {"kind": "numeric"}, "tags": {"family": "num"}},
    {"id": "c1", "prompt": "Paris is nice", "expected": "paris", "grader": {"kind": "contains", "ignore_case": True}},
    {"id": "x1", "prompt": "nope nope", "expected": "nope nope", "grader": {"kind": "exact"}},
    {"id": "r1", "prompt": "abc 123", "grader": {"kind": "regex", "pattern": r"\d{3}"}},
    {"id": "j1", "prompt": "Write a poem", "grader": {"kind": "judge"}},
    {"id": "s1", "prompt": '{"a": 1}', "grader": {"kind": "json_schema", "schema": {"type": "object"}}},
]
ECHO_SCORES = [1, 1, 1, 1, 0.8, 1]  # echo repeats the prompt: everything passes; the judge says 8/10
WORDS_SCORES = [0, 0, 1, 0, 0.8, 0]  # "nope nope" passes only the exact item and the judge


def experiment(root: Path, **changes: Any) -> Path:
    (root / "gateway.yaml").write_text(yaml.safe_dump(GATEWAY))
    (root / "suite.jsonl").write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    spec = {
        "name": "fake-ab",
        "suite": "suite.jsonl",
        "seed": 0,
        "concurrency": 3,
        "baseline": "echo",
        "target": {"serve_config": "gateway.yaml"},
        "defaults": {"max_tokens": 8},
        "judge": {"model": "judge-model"},
        "variants": [{"name": "echo", "model": "echo-model"}, {"name": "words", "model": "words-model"}],
        **changes,
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def no_progress(variant: str, done: int, total: int) -> None:
    assert 0 <= done <= total


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("eval-run")
    run = root / "run"
    results = run_experiment(load_experiment(experiment(root)), run, no_progress)
    yield run, results


def variant(results: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in results["variants"] if v["variant"] == name)


def test_grades_and_scores(finished: tuple[Path, dict[str, Any]]) -> None:
    _, results = finished
    echo, words = variant(results, "echo"), variant(results, "words")
    assert (echo["n"], echo["successes"], echo["errors"]) == (6, 6, 0)
    assert (words["n"], words["successes"], words["errors"]) == (6, 2, 0)
    assert echo["score"]["value"] == pytest.approx(sum(ECHO_SCORES) / 6)
    assert words["score"]["value"] == pytest.approx(sum(WORDS_SCORES) / 6)
    assert words["score"]["low"] <= words["score"]["value"] <= words["score"]["high"]
    assert echo["by_tag"] == {"family=num": {"n": 1, "pass_rate": 1.0}}


def test_cost_comes_from_the_gateway_and_matches_the_ledger(finished: tuple[Path, dict[str, Any]]) -> None:
    run, results = finished
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    engine = sa.create_engine(f"sqlite:///{run / 'ledger.db'}")
    with engine.connect() as connection:
        ledger = {r.request_id: r for r in connection.execute(sa.text("select * from ledger where kind='request'"))}
    for name in ("echo", "words"):
        mine = [r for r in records if r["variant"] == name]
        nano = sum(ledger[r["call"]["request_id"]].cost_nanousd for r in mine)
        total = Decimal(variant(results, name)["cost"]["total_usd"])
        assert total == Decimal(nano) / Decimal(10**9) and total > 0
        successes = variant(results, name)["successes"]
        assert Decimal(variant(results, name)["cost"]["per_success_usd"]) == pytest.approx(total / successes)
        assert variant(results, name)["cost"]["source"] == "gateway"
    assert variant(results, "echo")["energy_j_per_item"] > 0 and variant(results, "echo")["co2e_g_per_item"] > 0
    assert variant(results, "words")["energy_j_per_item"] is None  # a list-priced API: no energy figure
    assert all(r["call"]["request_id"] in ledger for r in records)
    with engine.connect() as connection:
        outcomes = {r.request_id: r.success for r in connection.execute(sa.text("select * from feedback"))}
    assert outcomes == {r["call"]["request_id"]: r["grade"]["passed"] for r in records}
    assert json.loads((run / "run.json").read_text())["feedback"] == {"posted": 12, "error": None}
    assert Decimal(variant(results, "words")["cost"]["per_item_usd"]) > Decimal(
        variant(results, "echo")["cost"]["per_item_usd"]
    )


def test_judge_grades_are_recorded_with_the_judge_model_and_cost(finished: tuple[Path, dict[str, Any]]) -> None:
    run, results = finished
    judged = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if '"j1"' in line]
    assert len(judged) == 2
    for record in judged:
        assert record["grade"] == {"score": 0.8, "passed": True, "detail": "judge judge-model (single-v1): 8/10"}
        assert record["judge"]["model"] == "judge-model" and Decimal(record["judge"]["cost_usd"]) > 0
        assert record["judge"]["text"] == "Rating: [[8]] "
    assert results["judge"] == {"model": "judge-model", "untrustworthy": False}
    assert variant(results, "echo")["cost"]["judge_total_usd"] is not None


def test_paired_comparison_and_pareto(finished: tuple[Path, dict[str, Any]]) -> None:
    _, results = finished
    words = results["comparisons"]["words"]
    assert words["baseline"] == "echo" and words["n"] == 6
    assert (words["only_baseline"], words["only_candidate"]) == (4, 0)
    assert words["diff"]["value"] == pytest.approx((sum(WORDS_SCORES) - sum(ECHO_SCORES)) / 6)
    assert words["mcnemar_p"] == pytest.approx(2 / 16)
    assert results["pareto_frontier"] == ["echo"]  # better and cheaper per success


def test_report_writes_markdown_html_and_a_png(finished: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = finished
    done = CliRunner().invoke(app, ["eval", "report", str(run), "--out", str(tmp_path), "--baseline", "words"])
    assert done.exit_code == 0, done.output
    text = (tmp_path / "report.md").read_text()
    assert "| echo ★ |" in text and "baseline `words`" in text and "McNemar" in text
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["comparisons"]["echo"]["only_candidate"] == 4


@pytest.mark.parametrize(
    ("args", "code", "expect"),
    [
        (["--baseline", "echo", "--max-quality-drop", "1"], 1, "FAIL words: quality drop"),
        (["--baseline", "words", "--max-quality-drop", "1", "--max-cost-increase", "5%"], 0, "PASS echo: cost"),
        (["--baseline", "echo", "--max-cost-increase", "5%"], 1, "FAIL words: cost per success"),
        (["--baseline", "words", "--slo", "e2e_p95_ms=60000", "--slo", "error_rate=0"], 0, "PASS echo: e2e_p95_ms"),
        (["--baseline", "words", "--slo", "ttft_p95_ms=0.0001"], 1, "FAIL echo: ttft_p95_ms ≤ 0.0001"),
        (["--baseline", "nobody", "--max-quality-drop", "1"], 2, "not a variant"),
        (["--baseline", "echo"], 2, "no rule given"),
        (["--baseline", "echo", "--candidate", "echo", "--max-cost-increase", "5%"], 2, "'echo' is the baseline"),
    ],
)
def test_gate_decisions(finished: tuple[Path, dict[str, Any]], args: list[str], code: int, expect: str) -> None:
    run, _ = finished
    done = CliRunner().invoke(app, ["eval", "gate", str(run), *args])
    assert done.exit_code == code, done.output
    assert expect in done.output.replace("\n", " ")


def test_gating_a_run_whose_only_variant_is_the_baseline_says_so() -> None:
    run = Path(__file__).parents[2] / "benchmarks" / "results" / "eval_examples" / "mtbench"  # one variant: q4_1
    done = CliRunner().invoke(app, ["eval", "gate", str(run), "--baseline", "q4_1", "--max-cost-increase", "5%"])
    assert done.exit_code == 2 and "no candidate to gate" in done.output, done.output  # said "no rule given"


def test_resume_asks_only_what_is_missing(finished: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    lines = (copy / "records.jsonl").read_text().splitlines(keepends=True)
    kept = "".join(lines[:5])
    (copy / "records.jsonl").write_text(kept + lines[5][:40])  # interrupted in the middle of a line
    (copy / "results.json").unlink()
    spec = load_experiment(experiment(tmp_path))
    results = run_experiment(spec, copy, no_progress)
    after = (copy / "records.jsonl").read_text()
    assert after.startswith(kept)
    records = [json.loads(line) for line in after[len(kept) :].splitlines()]  # the cut line is gone
    assert len(records) == 7
    keys = {(r["variant"], r["item"]) for r in records} | {
        (json.loads(line)["variant"], json.loads(line)["item"]) for line in lines[:5]
    }
    assert len(keys) == 12
    assert variant(results, "echo")["successes"] == 6 and variant(results, "words")["successes"] == 2
    assert json.loads((copy / "run.json").read_text())["resumed"] == 1


def test_a_run_folder_refuses_a_different_experiment(finished: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    done = CliRunner().invoke(app, ["eval", "run", str(experiment(tmp_path, seed=1)), "--out", str(copy)])
    assert done.exit_code == 2 and "different experiment" in done.output


def test_direct_target_is_priced_from_the_variant_price(tmp_path: Path) -> None:
    path = experiment(tmp_path)
    with serve(tmp_path / "gateway.yaml", tmp_path / "other.db", tmp_path / "serve.log") as url:
        spec = yaml.safe_load(path.read_text())
        spec["target"] = {"base_url": url, "direct": True}
        spec["judge"] = {"model": "judge-model"}
        spec["variants"] = [{"name": "words", "model": "words-model", "price": {"input": "1000", "output": "0"}}]
        spec["baseline"] = "words"
        path.write_text(yaml.safe_dump(spec))
        results = run_experiment(load_experiment(path), tmp_path / "run", no_progress)
    words = variant(results, "words")
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    input_tokens = sum(r["call"]["input_tokens"] for r in records)
    assert words["cost"]["source"] == "price"
    assert Decimal(words["cost"]["total_usd"]) == Decimal(input_tokens) * 1000 / 10**6
    assert words["energy_j_per_item"] is None and not (tmp_path / "run" / "ledger.jsonl").read_text()


def test_judge_graded_items_need_a_judge_before_anything_runs(tmp_path: Path) -> None:
    path = experiment(tmp_path, judge=None)
    done = CliRunner().invoke(app, ["eval", "run", str(path), "--out", str(tmp_path / "run")])
    assert done.exit_code == 2 and "judge" in done.output and not (tmp_path / "run").exists()


def test_run_files_hold_no_ledger_password(tmp_path: Path, fresh_postgres: str) -> None:
    """A target's ledger URL with a password (the test server trusts loopback and ignores it): the run reads
    the ledger with it, and run.json and results.json, files to share, show `***` for it."""
    from margin.evals.summary import load_run
    from tests.helpers import margin_serve

    ledger = fresh_postgres.replace("://margin@", "://margin:s3cret@", 1)
    path = experiment(tmp_path)
    gateway = tmp_path / "gateway-pg.yaml"
    gateway.write_text(yaml.safe_dump({**GATEWAY, "storage": {"ledger": ledger, "flush_interval_ms": 10}}))
    with margin_serve(None, tmp_path / "serve.log", config=gateway, ready_s=60) as (url, _):
        spec = yaml.safe_load(path.read_text())
        spec["target"] = {"base_url": f"{url}/v1", "ledger": ledger}
        path.write_text(yaml.safe_dump(spec))
        run_experiment(load_experiment(path), tmp_path / "run", no_progress)
    files = {name: (tmp_path / "run" / name).read_text() for name in ("run.json", "results.json")}
    for name, text in files.items():
        assert "s3cret" not in text, name
    meta = json.loads(files["run.json"])
    shown = ledger.replace("s3cret", "***")
    assert meta["ledger"]["url"] == shown and meta["ledger"]["rows"] == 14  # 12 answers, 2 judge calls
    assert meta["experiment"]["target"]["ledger"] == shown
    assert load_run(tmp_path / "run")["variants"]  # the run folder still reads back
    resumed = run_experiment(load_experiment(path), tmp_path / "run", no_progress)  # the same experiment: resumed
    assert resumed["variants"] and json.loads((tmp_path / "run" / "run.json").read_text())["resumed"] == 1


def test_a_model_the_gateway_does_not_serve_is_reported_as_failed_requests(tmp_path: Path) -> None:
    """Every answer an error (here: a model the gateway does not serve): the items score 0, and the report says
    why instead of showing a model that scores 0 %; the run exits 1 (it exited 0, measuring nothing)."""
    path = experiment(tmp_path, judge=None, baseline="ghost", variants=[{"name": "ghost", "model": "ghost-model"}])
    (tmp_path / "suite.jsonl").write_text("".join(json.dumps(item) + "\n" for item in ITEMS[:2]))
    done = CliRunner().invoke(app, ["eval", "run", str(path), "--out", str(tmp_path / "run")])
    said = " ".join(done.output.split())
    assert done.exit_code == 1 and isinstance(done.exception, SystemExit), done.output
    assert "error: every one of the 2 requests failed (first:" in said and "ghost-model" in said, said
    assert "1: every request of the run failed" in CliRunner().invoke(app, ["eval", "run", "--help"]).output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    ghost = variant(results, "ghost")
    assert ghost["errors"] == ghost["n"] == 2 and "ghost-model" in ghost["first_error"]
    assert "2 of 2 requests failed" in (tmp_path / "run" / "report.md").read_text()
    assert "2 of 2 requests failed" in " ".join(done.output.split())


def test_a_run_where_some_requests_failed_exits_0_and_says_so(tmp_path: Path) -> None:
    """One variant's every request failed, the other's answered: exit 0 (the gate's `--slo error_rate=…` is the
    check), the report and the terminal name the failures, and the gate fails on them."""
    variants = [{"name": "echo", "model": "echo-model"}, {"name": "ghost", "model": "ghost-model"}]
    path = experiment(tmp_path, judge=None, variants=variants)
    (tmp_path / "suite.jsonl").write_text("".join(json.dumps(item) + "\n" for item in ITEMS[:2]))
    done = CliRunner().invoke(app, ["eval", "run", str(path), "--out", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    assert "`ghost`: 2 of 2 requests failed" in " ".join(done.output.split())
    assert "2 of 2 requests failed" in (tmp_path / "run" / "report.md").read_text()
    gate = ["eval", "gate", str(tmp_path / "run"), "--baseline", "echo", "--slo", "error_rate=0.01"]
    assert CliRunner().invoke(app, gate).exit_code == 1


@pytest.mark.parametrize("meta", [b'{"experiment": {"na', b"[1, 2]", b'{"experiment": {"name": 5}}'])
def test_a_run_folder_whose_run_json_is_broken_is_one_error_line(tmp_path: Path, meta: bytes) -> None:
    """run.json cut short, not an object, or naming no valid experiment: `eval report`, `eval gate` and a
    resuming `eval run` say which file and exit 2 (a traceback before), and the run is not started over it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_bytes(meta)
    path = experiment(tmp_path)
    for args in (["report", str(run)], ["gate", str(run), "--baseline", "echo"], ["run", str(path), "--out", str(run)]):
        done = CliRunner().invoke(app, ["eval", *args])
        said = " ".join(done.output.split())
        assert done.exit_code == 2 and isinstance(done.exception, SystemExit), (args, done.output)
        assert "run.json" in said or "a run of a different experiment" in said, said
    assert (run / "run.json").read_bytes() == meta


async def test_an_unknown_price_is_an_unknown_cost_not_a_crash() -> None:
    """The gateway writes `x-margin-cost-usd: unknown` for a model at an unknown price, in a failed stream's
    header or a stream's closing comment: the request's cost is unknown (the header raised InvalidOperation)."""
    answers = {
        "failed": httpx.Response(502, headers={"x-margin-cost-usd": "unknown"}, json={"error": {"message": "x"}}),
        "streamed": httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n: x-margin-cost-usd=unknown '
            b"x-margin-overhead-ms=0.2\n\ndata: [DONE]\n\n",
        ),
    }
    transport = httpx.MockTransport(lambda request: answers[orjson.loads(request.content)["model"]])
    async with httpx.AsyncClient(transport=transport) as http:
        for model, status in (("failed", 502), ("streamed", 200)):
            result = await chat(http, Endpoint("http://gateway/v1"), model, [{"role": "user", "content": "q"}], {})
            assert (result.status, result.cost_usd) == (status, None)
    assert result.text == "hi" and result.error is None
