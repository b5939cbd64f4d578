"""llama.cpp backend pieces that need no generation (the real model runs in tests/integration)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from margin.api.errors import status_of
from margin.backend_config import LlamaCppBackendConfig
from margin.backends.llamacpp import LlamaCppBackend, resolve_model_file
from margin.errors import ConfigError, Overloaded
from margin.parsing import parse_request
from margin.protocol import ChatCompletionRequest, Endpoint
from margin.types import Prompt


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


def _prompt() -> Prompt:
    chat = parse_request(Endpoint.CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert isinstance(chat, ChatCompletionRequest)
    return Prompt({}, chat, "m")


async def _settled(backend: LlamaCppBackend, counting: int) -> None:
    for _ in range(500):
        if backend._counting == counting:
            return
        await asyncio.sleep(0.01)
    assert backend._counting == counting


async def test_counts_tokenize_on_their_own_thread_bounded_by_max_queue() -> None:
    backend = LlamaCppBackend("local", LlamaCppBackendConfig(max_queue=1))
    backend._llm = SimpleNamespace(close=lambda: None)  # loaded, as far as counting is concerned
    started, release, threads = threading.Event(), threading.Event(), []

    def tokenize(_request: Any) -> tuple[list[int], list[str], str]:  # stands in for the template and tokenizer
        threads.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return [1, 2, 3], [], ""

    backend._prompt = tokenize  # type: ignore[method-assign,assignment]
    try:
        first = asyncio.create_task(backend.count_input_tokens(_prompt()))
        second = asyncio.create_task(backend.count_input_tokens(_prompt()))  # waits for the first's thread
        await asyncio.to_thread(started.wait, 10)
        with pytest.raises(Overloaded) as full:  # one counting, one waiting: max_queue=1 is full
            await backend.count_input_tokens(_prompt())
        assert status_of(full.value) == 503 and "2 requests running or queued" in full.value.message
        second.cancel()  # a waiting count whose caller left is dropped, never tokenized: its place is free
        with pytest.raises(asyncio.CancelledError):
            await second
        await _settled(backend, 1)
        first.cancel()  # a running one holds its place until its thread is done with it
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(0.05)
        assert backend._counting == 1
        release.set()
        await _settled(backend, 0)
        assert await backend.count_input_tokens(_prompt()) == 3
        assert set(threads) == {"llama-count-local_0"}  # never the event loop's thread, nor the generations'
        assert len(threads) == 2  # the first count and the last
    finally:
        release.set()
        await backend.close()


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
