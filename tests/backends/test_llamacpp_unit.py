"""llama.cpp backend pieces that need no generation (the real model runs in tests/integration)."""

from __future__ import annotations

from pathlib import Path

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


def test_a_file_llama_cpp_cannot_load_is_one_error_line_naming_it(tmp_path: Path) -> None:
    """`margin eval perplexity --model A=notes.txt`, a folder or a GGUF cut short: one `error:` line and exit 2
    (llama-cpp-python's bare ValueError was a traceback; a folder was "does not exist")."""
    from typer.testing import CliRunner

    from margin.cli import app

    text = tmp_path / "notes.txt"
    text.write_text('{"not": "a model"}\n')
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(b"GGUF" + bytes(1000))
    for path, says in ((text, "is not a GGUF model"), (cut, "is not a GGUF model"), (tmp_path, "is not a file")):
        args = ["eval", "perplexity", "--reference", "A", "--model", f"A={path}", "--tokens", "64", "--ctx", "32"]
        result = CliRunner().invoke(app, args)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and says in said and isinstance(result.exception, SystemExit), result.output
