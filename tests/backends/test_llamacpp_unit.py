"""llama.cpp backend pieces that need no generation (the real model runs in tests/integration)."""

from __future__ import annotations

import pytest

from margin.api.errors import status_of
from margin.backend_config import LlamaCppBackendConfig
from margin.backends.llamacpp import LlamaCppBackend, resolve_model_file
from margin.errors import ConfigError, Overloaded


def test_builtin_model_comes_from_the_wheel() -> None:
    path = resolve_model_file("builtin:smollm2-135m-q4_1")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000
    with pytest.raises(ConfigError, match="unknown builtin"):
        resolve_model_file("builtin:gpt-5")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_file("/nowhere/model.gguf")


def test_bounded_queue_answers_503_with_retry_after() -> None:
    backend = LlamaCppBackend("local", LlamaCppBackendConfig(max_queue=2))
    with pytest.raises(Overloaded) as loading:
        backend._admit()
    assert loading.value.code == "backend_loading"
    backend._llm = object()  # loaded, as far as admission is concerned
    backend._in_flight = 3  # one running + two waiting: the queue is full
    with pytest.raises(Overloaded) as full:
        backend._admit()
    assert status_of(full.value) == 503 and full.value.headers == {"retry-after": "1"}
    assert "max_queue=2" in full.value.message
    backend._in_flight = 2
    backend._admit()  # room for one more
