"""Experiment YAML (variants, matrix, baseline, templates), suites (JSONL and built-ins) and judge parsing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from margin.errors import ConfigError
from margin.evals.catalog import load_suite
from margin.evals.experiment import apply_template, load_experiment
from margin.evals.generated import smol_basics
from margin.evals.judge import mtbench_templates, parse_rating, untrustworthy

BASE = {"name": "x", "suite": "builtin:smol-basics", "target": {"base_url": "http://127.0.0.1:1/v1"}}


def write(tmp_path: Path, **spec: object) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**BASE, **spec}))
    return path


def test_matrix_crosses_models_templates_and_params_and_records_the_seed(tmp_path: Path) -> None:
    matrix = {
        "models": [{"name": "a", "model": "m-a", "quantization": "Q8_0"}, {"name": "b", "model": "m-b"}],
        "templates": {"plain": "{question}", "terse": "{question} Be brief."},
        "params": {"greedy": {"temperature": 0}, "warm": {"temperature": 0.7}},
    }
    spec = load_experiment(write(tmp_path, seed=11, defaults={"max_tokens": 9}, matrix=matrix, baseline="b+terse+warm"))
    variants = spec.all_variants()
    assert [v.name for v in variants][:3] == ["a+plain+greedy", "a+plain+warm", "a+terse+greedy"]
    assert len(variants) == 8 and spec.baseline_name() == "b+terse+warm"
    warm = variants[-1]
    assert warm.params == {"seed": 11, "max_tokens": 9, "temperature": 0.7} and warm.template.endswith("Be brief.")


def test_experiment_errors_are_config_errors(tmp_path: Path) -> None:
    one = [{"name": "a", "model": "m"}]
    with pytest.raises(ConfigError, match="baseline"):
        load_experiment(write(tmp_path, variants=one, baseline="zzz"))
    with pytest.raises(ConfigError, match="unique names"):
        load_experiment(write(tmp_path, variants=one + one))
    with pytest.raises(ConfigError, match="exactly one of serve_config or base_url"):
        load_experiment(write(tmp_path, variants=one, target={}))
    with pytest.raises(ConfigError, match="Extra inputs"):
        load_experiment(write(tmp_path, variants=one, surprise=1))


def test_digest_ignores_concurrency_but_not_the_seed(tmp_path: Path) -> None:
    one = [{"name": "a", "model": "m"}]
    a = load_experiment(write(tmp_path, variants=one)).digest()
    assert load_experiment(write(tmp_path, variants=one, concurrency=8)).digest() == a
    assert load_experiment(write(tmp_path, variants=one, seed=2)).digest() != a


def test_template_and_system_prompt_wrap_the_last_user_message(tmp_path: Path) -> None:
    spec = load_experiment(
        write(tmp_path, variants=[{"name": "a", "model": "m", "template": "Q: {question}\nA:", "system": "Be terse."}])
    )
    messages = [{"role": "system", "content": "old"}, {"role": "user", "content": "2+2?"}]
    assert apply_template(spec.all_variants()[0], messages) == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Q: 2+2?\nA:"},
    ]
    assert messages[1]["content"] == "2+2?"


def test_jsonl_suite_validation(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "a", "prompt": "hi", "expected": "x"}) + "\n\n")
    items = load_suite(str(good))
    assert items[0].messages == [{"role": "user", "content": "hi"}] and items[0].grader.kind == "exact"
    for bad, match in [
        ({"id": "a"}, "messages"),
        ({"id": "a", "prompt": "p", "grader": {"kind": "vibes"}}, "grader"),
        ({"id": "a", "prompt": "p", "colour": 1}, "colour"),
    ]:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ConfigError, match=match):
            load_suite(str(path))
    twice = tmp_path / "twice.jsonl"
    twice.write_text((json.dumps({"id": "a", "prompt": "p"}) + "\n") * 2)
    with pytest.raises(ConfigError, match="unique"):
        load_suite(str(twice))
    with pytest.raises(ConfigError, match="unknown builtin"):
        load_suite("builtin:nope")


def test_builtin_suites_from_their_wheels() -> None:
    humaneval = load_suite("builtin:humaneval")
    assert len(humaneval) == 164 and humaneval[0].grader.kind == "code" and humaneval[0].grader.entry_point
    mtbench = load_suite("builtin:mtbench")
    assert len(mtbench) == 80 and {i.grader.kind for i in mtbench} == {"judge"}
    with_reference = [i for i in mtbench if i.reference]
    assert len(with_reference) == 30 and {i.tags["category"] for i in with_reference} == {"math", "reasoning", "coding"}
    assert set(mtbench_templates()) == {"single-v1", "single-math-v1"}
    assert "{ref_answer_1}" in mtbench_templates()["single-math-v1"]


def test_smol_basics_is_deterministic_per_seed() -> None:
    a, b = smol_basics(0), smol_basics(0)
    assert [i.model_dump() for i in a] == [i.model_dump() for i in b] and len(a) == 100
    assert [i.model_dump() for i in smol_basics(1)] != [i.model_dump() for i in a]
    assert len({i.id for i in a}) == 100
    assert {i.tags["family"] for i in a} == {"add1", "sub1", "add2", "succ", "letter", "capital"}
    assert load_suite("builtin:smol-basics", limit=7)[6].id == a[6].id


def test_judge_rating_parsing_and_small_judge_flag() -> None:
    assert parse_rating("The answer is fine. Rating: [[7]]") == 7
    assert parse_rating("Rating: [8.5]") == 8.5
    assert parse_rating("Rating: [[11]]") is None and parse_rating("great answer") is None
    assert untrustworthy("smollm2-135m-instruct") and untrustworthy("local") and not untrustworthy("gpt-4o")


def test_schedule_interleaves_variants_with_a_rotating_order_and_skips_what_is_done(tmp_path: Path) -> None:
    from margin.evals.runner import schedule

    spec = load_experiment(write(tmp_path, variants=[{"name": n, "model": "m"} for n in ("a", "b", "c")]))
    items = load_suite("builtin:smol-basics", limit=3)
    order = [(v.name, i.id[-2:]) for v, i in schedule(spec.all_variants(), items, set(), "interleaved")]
    first, second, third = order[:3], order[3:6], order[6:]
    assert first == [("a", "00"), ("b", "00"), ("c", "00")]
    assert second == [("b", "01"), ("c", "01"), ("a", "01")] and third == [("c", "02"), ("a", "02"), ("b", "02")]
    done = {("a", items[0].id), ("c", items[2].id)}
    rest = schedule(spec.all_variants(), items, done, "sequential")
    assert [(v.name, i.id[-2:]) for v, i in rest][:3] == [("a", "01"), ("a", "02"), ("b", "00")] and len(rest) == 7


def test_an_unreadable_jsonl_suite_is_one_error_naming_it(tmp_path: Path) -> None:
    """Bytes that are not UTF-8, a .gz that is not gzip or is cut short, an array nested past what margin
    writes back, an empty file or a folder: a ConfigError (one `error:` line), not a traceback or an empty run."""
    line = json.dumps({"id": "a", "prompt": "hi"}).encode() + b"\n"
    cases = {
        "latin.jsonl": (line + b'{"id": "b", "prompt": "caf\xe9"}\n', "latin.jsonl:2"),
        "corrupt.jsonl.gz": (b"not gzip at all", "cannot read"),
        "cut.jsonl.gz": (gzip.compress(line * 500)[:40], "cannot read"),
        "deep.jsonl": (b"[" * 5000 + b"]" * 5000 + b"\n", "deep.jsonl:1"),
        "empty.jsonl": (b"\n\n", "holds no items"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=match):
            load_suite(str(tmp_path / name))
    with pytest.raises(ConfigError, match="is not a file"):
        load_suite(str(tmp_path))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + line)  # an editor's byte-order mark is not an error
    assert [item.id for item in load_suite(str(tmp_path / "bom.jsonl"))] == ["a"]
