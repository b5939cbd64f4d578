from __future__ import annotations

import json
from pathlib import Path

import pytest

from margin.errors import ConfigError
from margin.routing.routellm import (
    STRONG_COLUMN,
    WEAK_COLUMN,
    contaminated_prompts,
    default_data_dir,
    grouped_folds,
    iter_splits,
    kfolds,
    load_dataset,
)


def write_csv(path: Path, rows: list[tuple[str, bool, bool]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", WEAK_COLUMN, STRONG_COLUMN])
        for prompt, weak, strong in rows:
            writer.writerow([prompt, str(weak), str(strong)])


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    for subject in ("anatomy", "law", "physics", "virology"):
        write_csv(mmlu / f"mmlu_{subject}.csv", [(f"{subject} q{i}\nA. x", i % 2 == 0, True) for i in range(5)])
    (mmlu / "contaminated_prompts.jsonl").write_text(
        json.dumps({"train_prompt": "other", "eval_prompt": "law q3\nA. x", "train_idx": 1, "eval_idx": 2}) + "\n"
    )
    return tmp_path


def test_contaminated_prompts_are_excluded(tiny: Path) -> None:
    examples = load_dataset(tiny, "mmlu")
    assert len(examples) == 19
    assert "law q3\nA. x" not in {e.prompt for e in examples}
    assert {e.group for e in examples} == {"anatomy", "law", "physics", "virology"}
    assert contaminated_prompts(tiny / "mmlu") == {"other", "law q3\nA. x"}


def test_weak_adequate_label(tiny: Path) -> None:
    example = load_dataset(tiny, "mmlu")[1]
    assert (example.weak_ok, example.strong_ok, example.weak_adequate) == (False, True, False)


def test_grouped_folds_never_share_a_subject(tiny: Path) -> None:
    examples = load_dataset(tiny, "mmlu")
    splits = grouped_folds([e.group for e in examples], 2, seed=3)
    tested: list[int] = []
    for split in splits:
        train_groups = {examples[i].group for i in split.train}
        test_groups = {examples[i].group for i in split.test}
        assert train_groups and test_groups and not train_groups & test_groups
        tested.extend(split.test)
    assert sorted(tested) == list(range(len(examples)))


def test_kfolds_partition() -> None:
    splits = kfolds(23, 5, seed=1)
    assert sorted(i for s in splits for i in s.test) == list(range(23))
    for split in splits:
        assert not set(split.train) & set(split.test) and len(split.train) + len(split.test) == 23


def test_real_data_splits_and_exclusions() -> None:
    data = default_data_dir()
    mmlu = load_dataset(data, "mmlu")
    bad = contaminated_prompts(data / "mmlu")
    assert not bad & {e.prompt for e in mmlu}
    for split in iter_splits(mmlu, "mmlu", 5):
        assert not {mmlu[i].group for i in split.train} & {mmlu[i].group for i in split.test}
    gsm8k = load_dataset(data, "gsm8k")
    assert len(gsm8k) == 1319 - 12  # the 12 contaminated GSM8K test prompts are dropped
    assert not contaminated_prompts(data / "gsm8k") & {e.prompt for e in gsm8k}


def test_bad_inputs(tiny: Path) -> None:
    with pytest.raises(ConfigError):
        load_dataset(tiny, "gsm9k")
    with pytest.raises(ConfigError):
        load_dataset(tiny, "gsm8k")
    with pytest.raises(ConfigError):
        grouped_folds(["a", "b"], 3)
