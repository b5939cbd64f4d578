"""A budget set while its scope is spending (PUT /admin/budgets, a reload) is counted from the ledger when a
request first uses it. That read missed what the ledger did not hold yet: the rows still in this process's outbox
(up to `storage.flush_interval_ms` of traffic) and the requests in flight, admitted before the budget existed.
Neither was ever counted for the rest of the window: a $0.035 hard budget set right after $0.03 of requests
admitted $0.03 more, and one set while $0.04 of requests ran admitted its whole cap on top of them. The same
after a `kill -9`: the rows the killed process acknowledged are in its outbox files, which the next process
ingests in the background, so its counters were made without them and a $0.035 budget spent $0.06. One
`margin serve` (SQLite ledger, counters in process, the default flush interval of 1 s), real HTTP."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy as sa
import yaml

from margin.ledger import db
from margin.ledger.models import ledger
from tests.governance.conftest import make_key, served_with_admin
from tests.helpers import margin_serve

PRICE = {"input": "0", "output": "2500", "version": "t"}  # $0.0025 an output token
BODY = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}  # $0.01
LONG = {**BODY, "model": "long", "max_tokens": 8}  # $0.02, answered in about 2 s
CONFIG = {
    "backends": {
        "api": {"kind": "fake", "output_tokens": 4},
        "slow": {"kind": "fake", "output_tokens": 8, "tokens_per_s": 4},
    },
    "models": {"priced": {"backend": "api", "price": PRICE}, "long": {"backend": "slow", "price": PRICE}},
}


def _budget(usd: str) -> dict[str, object]:
    return {"name": "g", "scope": {"kind": "global"}, "usd": usd, "period": "month", "mode": "hard"}


def _ledger_spent(url: str, rows: int) -> int:
    """Every row's cost once the ledger holds `rows` rows (the outbox is moved within a second)."""
    engine = db.make_sync_engine(url)
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as connection:
                costs = [row.cost_nanousd or 0 for row in connection.execute(sa.select(ledger.c.cost_nanousd))]
            if len(costs) >= rows or time.monotonic() > deadline:
                return sum(costs)
            time.sleep(0.1)
    finally:
        engine.dispose()


def test_a_budget_set_right_after_spending_counts_the_rows_still_in_the_outbox(tmp_path: Path) -> None:
    with served_with_admin(tmp_path, CONFIG) as (base, url, admin):
        _, key = make_key(tmp_path / "ledger.db", name="k")
        auth = {"authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            spent = [http.post("/v1/chat/completions", json=BODY, headers=auth).status_code for _ in range(3)]
            assert spent == [200] * 3  # $0.03, in the outbox for up to a second
            assert http.put("/admin/budgets", json=_budget("0.035"), headers=admin).status_code == 200
            after = [http.post("/v1/chat/completions", json=BODY, headers=auth).status_code for _ in range(3)]
            assert after == [429] * 3  # before: 200 × 3, the budget's counter at $0.03 with the ledger at $0.06
            (state,) = http.get("/admin/budgets", headers=admin).json()["data"]
        assert state["spent"] == "0.030000000" and state["reserved"] == "0.000000000"
        assert _ledger_spent(url, 6) == 30_000_000


def test_a_budget_set_while_requests_run_counts_them_once_they_end(tmp_path: Path) -> None:
    with served_with_admin(tmp_path, CONFIG) as (base, url, admin):
        _, key = make_key(tmp_path / "ledger.db", name="k")
        auth = {"authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, timeout=30) as http, ThreadPoolExecutor(2) as pool:
            running = [pool.submit(http.post, "/v1/chat/completions", json=LONG, headers=auth) for _ in range(2)]
            time.sleep(0.5)  # both admitted (no budget yet), answering for 2 s: $0.04 in all
            assert http.put("/admin/budgets", json=_budget("0.05"), headers=admin).status_code == 200
            assert http.post("/v1/chat/completions", json=BODY, headers=auth).status_code == 200  # $0.01
            assert [future.result().status_code for future in running] == [200, 200]
            time.sleep(4)  # their rows in the ledger, and the budget's counter raised to it
            refused = http.post("/v1/chat/completions", json=BODY, headers=auth)
            # before: 200, and 200 again up to $0.05 on top of the $0.04 that ran when the budget was set
            assert refused.status_code == 429, refused.text
            (state,) = http.get("/admin/budgets", headers=admin).json()["data"]
        assert state["spent"] == "0.050000000" and state["reserved"] == "0.000000000"
        assert _ledger_spent(url, 4) == 50_000_000


def test_rows_a_killed_process_left_in_its_outbox_count_against_the_next_ones_budgets(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _, key = make_key(tmp_path / "ledger.db", name="k")
    auth = {"authorization": f"Bearer {key}"}
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "storage": {"ledger": url}, "budgets": [_budget("0.035")]}))
    with margin_serve(None, tmp_path / "first.log", path) as (base, process):
        spent = [httpx.post(f"{base}/v1/chat/completions", json=BODY, headers=auth).status_code for _ in range(3)]
        assert spent == [200] * 3  # $0.03 of the $0.035, acknowledged: in the outbox for up to a second
        process.send_signal(signal.SIGKILL)
        process.wait()
    with margin_serve(None, tmp_path / "second.log", path) as (base, _):
        after = [httpx.post(f"{base}/v1/chat/completions", json=BODY, headers=auth).status_code for _ in range(3)]
    assert after == [429] * 3  # before: 200 × 3, $0.06 against the $0.035 hard budget
    assert _ledger_spent(url, 6) == 30_000_000
