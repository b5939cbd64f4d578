"""The local embedder (`sentence_transformers`, the real MiniLM) attacked through a running `margin serve`: its
one encoding thread takes requests from a bounded queue (`max_queue`), as the llama.cpp backend does. Before,
its queue had no bound: one key's burst of large batches queued without limit, and every other caller's
embedding waited behind all of it (40 batches at once: all accepted, the last answered after minutes)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.security.conftest import ServeFactory

CONFIG = {
    "backends": {"embedder": {"kind": "sentence_transformers", "max_queue": 1}},
    "models": {"embed": {"backend": "embedder", "kind": "embedding"}},
}
BATCH = {"model": "embed", "input": ["lorem ipsum dolor sit amet " * 60] * 64}  # ~1 s of the thread each
SMALL = {"model": "embed", "input": "a cat sat on the mat"}


def test_requests_past_the_embedders_queue_get_503_and_their_places_come_back(served: ServeFactory) -> None:
    with served(CONFIG) as gw, gw.client(timeout=120) as client:
        assert client.post("/v1/embeddings", json=SMALL).status_code == 200  # the model has loaded

        def post(_: int) -> httpx.Response:
            with gw.client(timeout=120) as own:
                return own.post("/v1/embeddings", json=BATCH)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses  # one encoding, one waiting
        assert set(statuses) == {200, 503}, statuses
        refused = next(answer for answer in answers if answer.status_code == 503)
        assert refused.json()["error"]["code"] == "server_overloaded"
        assert refused.headers["retry-after"] == "1"
        assert "max_queue=1" in refused.json()["error"]["message"]
        for _ in range(3):  # every place was given back: one at a time is always served
            assert client.post("/v1/embeddings", json=SMALL).status_code == 200
