"""The local model's KV cache is reused for one key's prompts only (`margin serve` with the default config:
SmolLM2 on llama.cpp, two keys of two teams, the official openai SDK). Before, the prompt another key sent last
was reused for the length it shared with the next one, and `usage.prompt_tokens_details.cached_tokens` told the
next caller that length: key B learned key A's prompt token by token (a guess sharing "The patient Jonathan Smith
was diagnosed with" was answered 31 cached tokens, one going on to "diabetes and his account PIN is" 38)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import openai
import pytest
import yaml

from tests.security.conftest import Served, serving_in

pytestmark = pytest.mark.integration

SECRET = "The patient Jonathan Smith was diagnosed with diabetes and his account PIN is 4 8 1 9."
GUESS = "The patient Jonathan Smith was diagnosed with diabetes and his account PIN is 1"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    default = yaml.safe_load(files("margin").joinpath("default_config.yaml").read_text())
    folder: Path = tmp_path_factory.mktemp("kv-tenants")
    with serving_in(folder)(default, keys={"a": ["--team", "ta"], "b": ["--team", "tb"]}) as served:
        yield served


def _cached(served: Served, key: str, text: str) -> tuple[int, int]:
    """(prompt tokens, cached tokens) of a short completion of `text` by `key`."""
    client = openai.OpenAI(api_key=served.keys[key], base_url=f"{served.url}/v1", max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": text}], max_tokens=2, temperature=0.7
    )
    assert answer.usage is not None
    details = answer.usage.prompt_tokens_details
    return answer.usage.prompt_tokens, (details.cached_tokens or 0) if details is not None else 0


def test_another_key_is_not_told_how_much_of_its_prompt_the_last_one_shared(gateway: Served) -> None:
    _cached(gateway, "a", SECRET)
    prompt, cached = _cached(gateway, "b", GUESS)
    assert prompt > 30 and cached == 0  # before: 38 of B's 45 prompt tokens, all of them A's
    _cached(gateway, "a", SECRET)
    _, cached = _cached(gateway, "a", SECRET)  # the same key's prompt is reused as before
    assert cached > 30
    prompt, cached = _cached(gateway, "b", SECRET)  # A's prompt in the cache, B sends it word for word
    assert cached == 0
