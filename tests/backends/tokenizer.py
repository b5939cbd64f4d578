"""The real SmolLM2 tokenizer (vocabulary only, no weights) in a fresh interpreter.

Once `usearch` has been imported into a process, llama.cpp fails to load any model vocabulary there
(`std::bad_cast` in its tokenizer set-up: usearch 2.26.6, llama-cpp-python as pinned), so a test that runs after
the cache tests cannot load one in the test process. `in_fresh_process(expression)` evaluates `expression` with
`llm` (vocab-only `Llama`), `formatter` (its chat template), `chat_tokens`, `one_pass(formatter, messages)` (the
old single tokenization) and `refused(call)` (the InvalidRequest message, or None) in scope."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

PRELUDE = """
import json, sys
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from margin.backends.llamacpp import chat_tokens, resolve_model_file
from margin.errors import InvalidRequest
llm = Llama(model_path=str(resolve_model_file("builtin:smollm2-135m-q4_1")), vocab_only=True, verbose=False)
formatter = Jinja2ChatFormatter(
    template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="<|im_start|>"
)
def one_pass(formatter, messages):
    formatted = formatter(messages=messages)
    return list(llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True))
def refused(call):
    try:
        call()
    except InvalidRequest as exc:
        return exc.message
    return None
"""


def in_fresh_process(expression: str, setup: str = "") -> Any:
    """`expression` evaluated after `setup` (statements) in a fresh interpreter, returned through JSON."""
    script = PRELUDE + setup + f"\nprint(json.dumps({expression}))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
