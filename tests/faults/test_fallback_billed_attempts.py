"""A fallback's ledger row carries what every attempt was billed, through a real `margin serve` in front of the
fault upstream: the first target answers 200 with an error object and the usage it billed beside it (OpenRouter's
failed generation), the fallback answers. Before, the row (and the budget settled to it) carried the fallback's
usage and cost only: the first upstream's billed tokens were in no row and no budget."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from tests.fault_upstream import USAGE
from tests.faults.conftest import FaultUpstream
from tests.security.conftest import serving_in
from tests.security.waiting import wait_for

CHAT = "/v1/chat/completions"
PRICE = {"input": "1", "output": "1"}  # $1 per million tokens each way: 1,000 nano-USD a token
BILLED = (40, 30)  # what the failing upstream says it billed beside its error
FAILING = f"errorbody,usage={BILLED[0]}:{BILLED[1]}"


def test_a_fallback_row_and_its_budget_carry_the_failed_attempts_billed_usage(
    fault_upstream: FaultUpstream, tmp_path: Path
) -> None:
    config = {
        "backends": {
            "bad": {"kind": "openai", "base_url": fault_upstream.base(FAILING, "billed"), "retries": {"attempts": 0}},
            "good": {"kind": "openai", "base_url": fault_upstream.base("ok", "billed-good")},
        },
        "models": {
            "m": {"backend": "bad", "price": PRICE, "fallbacks": ["good"]},
            "good": {"backend": "good", "price": PRICE},
        },
        "budgets": [{"name": "t", "scope": {"kind": "team", "value": "t"}, "usd": "100", "period": "day"}],
    }
    keys = {"admin": ["--admin"], "k": ["--team", "t"]}
    with serving_in(tmp_path)(config, keys=keys) as gw:
        with gw.client(gw.keys["k"]) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
            response = client.post(CHAT, json=body)
        assert response.status_code == 200, response.text
        request_id = response.headers["x-margin-request-id"]
        answered = (USAGE["prompt_tokens"], USAGE["completion_tokens"])
        assert (response.json()["usage"]["prompt_tokens"], response.json()["usage"]["completion_tokens"]) == answered

        def row_landed() -> bool:
            return any(row.request_id == request_id for row in gw.rows())

        wait_for(row_landed, "the request's ledger row")
        row = next(row for row in gw.rows() if row.request_id == request_id)
        assert (row.status, row.backend, row.error_code) == ("fallback", "good", "upstream_error")
        assert (row.input_tokens, row.output_tokens) == answered  # the client's tokens: the answering attempt's
        # the cost: both attempts' billed tokens at $1 per million each way
        assert row.cost_nanousd == (sum(BILLED) + sum(answered)) * 1000

        def budget() -> dict[str, str]:
            with gw.client(gw.keys["admin"]) as admin:
                return dict(admin.get("/admin/budgets").json()["data"][0])

        wait_for(lambda: budget()["reserved"] == "0.000000000", "the reservation settled")
        assert Decimal(budget()["spent"]) == Decimal(row.cost_nanousd) / 10**9  # charged the same sum
