"""The waiters of a coalesced cache miss hold none of their key's stream places (`admission.max_streams_per_key`),
through a real `margin serve` in front of the fault upstream: before, each identical stream that waited for the
first one's upstream call held a place while calling nothing upstream, so a burst of them used up the key's cap
and its other streams (and the rest of the burst) were refused with 429 `too_many_streams`."""

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


def stream(gw: Served, key: str, content: str) -> tuple[int, str]:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "temperature": 0,  # cacheable: identical requests are coalesced
    }
    with gw.client(key, timeout=120) as client, client.stream("POST", CHAT, json=body) as response:
        return response.status_code, response.read().decode()


def test_identical_streams_waiting_on_one_call_leave_the_keys_places_free(
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
        wait_for(lambda: len(gw.rows()) == len(results), "every request's ledger row")
        rows = gw.rows()
    assert [status for status, _ in results] == [200] * 8, [text[:200] for _, text in results]
    assert all(text.rstrip().endswith("data: [DONE]") for _, text in results)
    # one upstream call per distinct question: the key's real calls stayed within its cap
    assert fault_upstream.count(SLOW, tag) == 2 <= CAP
    kinds = sorted(row.kind for row in rows)
    assert kinds == ["cache_hit"] * 6 + ["request"] * 2  # the six were answered with the first one's answer
