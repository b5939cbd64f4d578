"""The waiters of a coalesced cache miss hold none of their key's stream places (`admission.max_streams_per_key`),
through a real `margin serve` in front of the fault upstream: before, each identical stream that waited for the
first one's upstream call held a place while calling nothing upstream, so a burst of them used up the key's cap
and its other streams were refused with 429 `too_many_streams`. They wait in places of their own, as many as the
cap: past those, an identical stream is refused with the same 429 (before this bound, every waiter gave its place
back, so a key could hold its cap times `cache.coalesce_max_waiters` streams open: here all 8 at once)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.faults.conftest import FaultUpstream
from tests.security.conftest import Served, serving_in
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
SLOW = "slow,delay=8"  # the first call's answer comes this late: the identical ones wait for it meanwhile
CAP = 2


def stream(gw: Served, key: str, content: str) -> tuple[int, str, str | None]:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "temperature": 0,  # cacheable: identical requests are coalesced
    }
    with gw.client(key, timeout=120) as client, client.stream("POST", CHAT, json=body) as response:
        return response.status_code, response.read().decode(), response.headers.get("retry-after")


def test_identical_streams_wait_in_places_of_their_own_bounded_by_the_cap(
    fault_upstream: FaultUpstream, tmp_path: Path
) -> None:
    tag = "coalesced-slots"
    config = {
        "admission": {"max_streams_per_key": CAP},
        "backends": {"up": {"kind": "openai", "base_url": fault_upstream.base(SLOW, tag), "timeout_s": 60}},
        "models": {"m": {"backend": "up", "price": {"input": "1", "output": "1"}}},
    }
    with serving_in(tmp_path)(config, keys={"k": ["--team", "t"]}) as gw, ThreadPoolExecutor(10) as pool:
        key = gw.keys["k"]
        first = pool.submit(stream, gw, key, "the same question")
        wait_for(lambda: fault_upstream.count(SLOW, tag) == 1, "the first call upstream")
        same = []
        for _ in range(6):  # more than the cap, while the first call is in flight
            same.append(pool.submit(stream, gw, key, "the same question"))
            time.sleep(0.2)  # pacing only: each arrives once the one before waits
        other = pool.submit(stream, gw, key, "another question")
        results = [future.result(timeout=180) for future in (first, *same, other)]
        statuses = [status for status, _, _ in results]
        # the first calls upstream; two identical ones wait for its answer (the key's 2 waiting places), the four
        # after them are refused; the other question gets a stream place (the waiters hold none), calls upstream
        assert statuses == [200, 200, 200, 429, 429, 429, 429, 200], [text[:200] for _, text, _ in results]
        wait_for(lambda: len(gw.rows()) == len(results), "every request's ledger row")
        rows = gw.rows()
    for status, text, retry in results:
        if status == 200:
            assert text.rstrip().endswith("data: [DONE]")
        else:
            assert '"too_many_streams"' in text and retry == "1"
    # one upstream call per distinct question: the key's real calls stayed within its cap
    assert fault_upstream.count(SLOW, tag) == 2 <= CAP
    kinds = sorted((row.kind, row.status, row.http_status) for row in rows)
    # the two waiters were answered with the first one's answer; the four refused are recorded as 429s
    assert kinds == [("cache_hit", "ok", 200)] * 2 + [("request", "error", 429)] * 4 + [("request", "ok", 200)] * 2
