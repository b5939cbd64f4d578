"""Parts 4 and 5 of the evaluation: passkey retrieval and decode speed, both generating through the cache."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from margin.kv.methods import KVMethod

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important info there.\n\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\n\nWhat is the pass key? The pass key is"


def greedy(loaded: Any, ids: Any, cache: Any, new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy decoding through `cache`: generated ids, prefill seconds, decode seconds."""
    import torch

    model: Any = loaded.model
    started = time.perf_counter()
    with torch.no_grad():
        out: Any = model(input_ids=ids, past_key_values=cache, use_cache=True)
        prefilled = time.perf_counter()
        token: Any = out.logits[:, -1:].argmax(dim=-1)
        generated: list[int] = [int(token.item())]
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(dim=-1)
            generated.append(int(token.item()))
    return generated, prefilled - started, time.perf_counter() - prefilled


def passkey_prompt(tokenizer: Any, length: int, depth: float, key: int) -> list[int]:
    """About `length` tokens: filler with the pass key sentence at relative `depth`, then the question."""

    def encode(text: str) -> list[int]:
        return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]

    needle = encode(f"The pass key is {key}. Remember it. {key} is the pass key. ")
    intro, question, filler = encode(INTRO), encode(QUESTION), encode(FILLER)
    room = max(length - len(intro) - len(needle) - len(question), len(filler))
    units = room // len(filler)
    before = round(units * depth)
    return intro + filler * before + needle + filler * (units - before) + question


def run_passkey(
    loaded: Any,
    methods: list[KVMethod],
    *,
    lengths: list[int],
    depths: list[float],
    trials: int,
    seed: int,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    import torch

    from margin.kv.cache import CompressedCache

    rng = random.Random(seed)
    cases = [(n, d, rng.randint(10000, 99999)) for n in lengths for d in depths for _ in range(trials)]
    rows: dict[str, Any] = {}
    result = {"lengths": lengths, "depths": depths, "trials": trials, "cases": len(cases), "methods": rows}
    for method in [None, *methods]:
        hits: dict[str, list[int]] = {}
        for length, depth, key in cases:
            ids = torch.tensor([passkey_prompt(loaded.tokenizer, length, depth, key)])
            cache: Any = None if method is None else CompressedCache.for_model(method, loaded.model, seed=seed)
            out, _, _ = greedy(loaded, ids, cache, 7)
            answer = loaded.tokenizer.decode(out).strip()
            hits.setdefault(str(length), []).append(int(answer.startswith(str(key))))
        name = "reference" if method is None else method.name
        rows[name] = {n: sum(h) / len(h) for n, h in hits.items()}
        rows[name]["all"] = sum(sum(h) for h in hits.values()) / len(cases)
        if save is not None:
            save(result)
    return result


def run_speed(
    loaded: Any, methods: list[KVMethod], prompt: list[int], *, new_tokens: int, seed: int, rounds: int = 1
) -> dict[str, Any]:
    """Decode tokens/s with each cache (CPU emulation: every step decodes the whole compressed cache), the
    median over `rounds` rounds that alternate all methods (this machine is shared and noisy), and the bytes
    the cache really holds per token after prompt + generation."""
    import statistics

    import torch

    from margin.kv.cache import CompressedCache

    ids = torch.tensor([prompt])
    stored = len(prompt) + new_tokens - 1
    speeds: dict[str, list[float]] = {}
    sizes: dict[str, float] = {}
    for _ in range(rounds):
        for method in [None, *methods]:
            name = "reference" if method is None else method.name
            cache = None if method is None else CompressedCache.for_model(method, loaded.model, seed=seed)
            _, _, decode = greedy(loaded, ids, cache, new_tokens)
            speeds.setdefault(name, []).append((new_tokens - 1) / decode)
            if cache is not None:
                sizes[name] = cache.nbytes / stored
    rows: dict[str, Any] = {}
    for name, values in speeds.items():
        rows[name] = {"decode_tok_s": statistics.median(values), "rounds": values}
        if name in sizes:
            rows[name]["cache_bytes_per_token"] = sizes[name]
    return {"prompt_tokens": len(prompt), "new_tokens": new_tokens, "rounds": rounds, "methods": rows}
