"""The local embedder's token counts (admission's estimate under budgets or limits: on the event loop, or a
worker thread for a long prompt) run while its thread encodes other requests. A fast tokenizer's truncation is
shared state: the encoding turns it on for each batch, a count turned it off, and a count between the two made
the batch untruncated ("The size of tensor a (4002) must match the size of tensor b (512)": the request
failed). Counts now use a tokenizer of their own. The real MiniLM, two real threads: the race is not reliably
hit over HTTP (one count per admission), so it is forced here."""

from __future__ import annotations

import threading

from margin.backend_config import SentenceTransformersBackendConfig
from margin.backends.embeddings import SentenceTransformersBackend, resolve_model_dir


def test_counts_while_a_batch_encodes_never_untruncate_it() -> None:
    backend = SentenceTransformersBackend("embedder", SentenceTransformersBackendConfig())
    backend._load(resolve_model_dir("builtin:all-minilm-l6-v2"))
    texts = ["hello world " * 2000] * 64  # 4,000 tokens each: the model takes 256 (512 positions at most)
    failures: list[str] = []
    counts: list[int] = []
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            counts.append(backend.count_tokens("some words " * 30) or 0)

    counting = threading.Thread(target=count)
    counting.start()
    try:
        try:
            vectors, tokens, _ = backend._encode(texts)
            assert len(vectors) == 64 and tokens == 64 * 256  # billed as the model read them
        except RuntimeError as exc:
            failures.append(str(exc))
    finally:
        done.set()
        counting.join()
    assert failures == []
    assert len(counts) > 10 and set(counts) == {62}  # 60 words and the two special tokens, never truncated
