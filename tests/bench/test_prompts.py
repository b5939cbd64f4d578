"""Prompt sources: seeded random lengths, a JSONL file, and ShareGPT from the installed wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

from margin.bench.prompts import PromptSpec, load_prompts
from margin.errors import ConfigError, InvalidRequest


def test_random_prompts_have_the_requested_lengths_and_are_seeded() -> None:
    fixed = load_prompts(PromptSpec("random", count=5, seed=1, input_len=50, output_len=20))
    assert [len(p.text.split()) for p in fixed] == [50] * 5
    assert {p.output_len for p in fixed} == {20}
    assert len({p.text for p in fixed}) == 5  # distinct first words: no shared prefix to cache
    spread = load_prompts(PromptSpec("random", count=200, seed=1, input_len=100, output_len=40, range_ratio=0.5))
    assert min(p.input_len for p in spread) >= 50 and max(p.input_len for p in spread) <= 150
    assert min(p.output_len or 0 for p in spread) >= 20 and max(p.output_len or 0 for p in spread) <= 60
    assert load_prompts(PromptSpec("random", count=5, seed=1, input_len=50, output_len=20)) == fixed
    assert load_prompts(PromptSpec("random", count=5, seed=2, input_len=50, output_len=20)) != fixed
    capped = load_prompts(PromptSpec("random", count=2, input_len=5, max_tokens=3))
    assert {p.output_len for p in capped} == {3}


def test_jsonl_prompts(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "one two", "max_tokens": 9}\n\n{"text": "three"}\n')
    prompts = load_prompts(PromptSpec(f"jsonl:{path}", count=20, output_len=4))
    assert {p.text for p in prompts} == {"one two", "three"}
    assert {(p.text, p.output_len) for p in prompts} == {("one two", 9), ("three", 4)}
    path.write_text('{"nope": 1}\n')
    with pytest.raises(InvalidRequest, match=":1:"):
        load_prompts(PromptSpec(f"jsonl:{path}", count=1))
    with pytest.raises(ConfigError, match="cannot read"):
        load_prompts(PromptSpec(f"jsonl:{tmp_path / 'missing'}", count=1))
    with pytest.raises(InvalidRequest):
        load_prompts(PromptSpec("nope", count=1))


def test_sharegpt_prompts_from_the_wheel() -> None:
    prompts = load_prompts(PromptSpec("sharegpt", count=10, seed=0, output_len=None))
    assert len(prompts) == 10
    assert all(4 <= p.input_len <= 1024 and p.text.strip() for p in prompts)
    assert all(p.output_len is not None and p.output_len >= 1 for p in prompts)
    assert load_prompts(PromptSpec("sharegpt", count=10, seed=0, output_len=None)) == prompts
