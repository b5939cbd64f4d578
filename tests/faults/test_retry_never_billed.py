"""A backend's own retry (`retries`, backoff on the same backend) never repeats a try that may have been billed,
so nothing is left out of the row or the budgets when a retried request settles: a try is retried only on its
status line (a refused connection, 502/503/504, a 429 with a short Retry-After), before any answer is read, and
an error status's body is never read for usage. A 200 that failed after reporting usage (an error beside the
usage it billed) and a stream cut after its start are not retried: they end the attempt, and a fallback (if any)
sums them (`meter.plus`, tests/faults/test_fallback_budget_topup.py). Shown through a real `margin serve` in
front of the fault upstream, counting the upstream's requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.fault_upstream import USAGE
from tests.faults.conftest import FaultUpstream
from tests.security.conftest import Served, serving_in
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
PRICE = {"input": "1", "output": "1"}  # 1,000 nano-USD a token each way
RETRIES = {"attempts": 2, "backoff_s": 0.01, "backoff_max_s": 0.02}
MODES = {
    "billed": "errorbody,usage=40:30",  # 200, an error and the usage it billed: not retried
    "cut": "reset,events=2",  # a stream cut after its start: not retried
    "refused": "status,code=503,times=1",  # retried: its body is not an answer, and no usage is read from it
}


def config(fault_upstream: FaultUpstream) -> dict[str, Any]:
    backends = {
        name: {"kind": "openai", "base_url": fault_upstream.base(mode, f"retry-{name}"), "retries": RETRIES}
        for name, mode in MODES.items()
    }
    models = {name: {"backend": name, "price": PRICE} for name in MODES}
    budgets = [{"name": "all", "scope": {"kind": "global"}, "usd": "100", "period": "day"}]
    return {"backends": backends, "models": models, "budgets": budgets}


def row_of(gw: Served, response: httpx.Response) -> Any:
    request_id = response.headers["x-margin-request-id"]
    wait_for(lambda: any(row.request_id == request_id for row in gw.rows()), "the request's ledger row")
    return next(row for row in gw.rows() if row.request_id == request_id)


def test_a_try_that_may_be_billed_is_never_retried_on_the_same_backend(
    fault_upstream: FaultUpstream, tmp_path: Path
) -> None:
    with serving_in(tmp_path)(config(fault_upstream), keys={"k": []}) as gw, gw.client(gw.keys["k"]) as client:

        def send(model: str, stream: bool = False) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "stream": stream}
            return client.post(CHAT, json=body)

        billed = send("billed")
        assert billed.status_code == 502, billed.text
        assert fault_upstream.count(MODES["billed"], "retry-billed") == 1  # one try: not repeated
        assert row_of(gw, billed).cost_nanousd == (40 + 30) * 1000  # what it billed, once

        cut = send("cut", stream=True)
        assert cut.status_code == 200  # the stream had started: it ends with an error event
        assert fault_upstream.count(MODES["cut"], "retry-cut") == 1
        assert row_of(gw, cut).status == "upstream_error"

        retried = send("refused")
        assert retried.status_code == 200, retried.text
        assert fault_upstream.count(MODES["refused"], "retry-refused") == 2  # the 503, then the answer
        row = row_of(gw, retried)
        assert (row.status, row.error_code) == ("retried", "upstream_error")
        answered = USAGE["prompt_tokens"] + USAGE["completion_tokens"]
        assert (row.input_tokens + row.output_tokens, row.cost_nanousd) == (answered, answered * 1000)
