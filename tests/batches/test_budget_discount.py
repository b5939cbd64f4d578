"""A batch line is admitted against a hard budget at its discounted worst case, the cost it settles
(`batches.discount`): its reservation was the full price, so a line whose discounted cost fitted was refused
`budget_exceeded` (the same call live, undiscounted, is refused)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.batches.helpers import FINAL, entries, jsonl, line
from tests.helpers import margin_serve
from tests.security.conftest import FAKE_CONFIG

BUDGET_NANOUSD = 60_000  # a line's worst case here is $0.000094 undiscounted, $0.000047 at the batch discount


def _config(tmp_path: Path) -> Path:
    config: dict[str, Any] = {
        **FAKE_CONFIG,
        "backends": {**FAKE_CONFIG["backends"], "api": {"kind": "fake", "output_tokens": 4}},
        "models": {"priced": {"backend": "api", "price": {"input": "1.00", "output": "2.00", "version": "t1"}}},
        "budgets": [{"name": "g", "scope": {"kind": "global"}, "usd": "0.00006", "period": "day", "mode": "hard"}],
        "batches": {"objective": "asap", "concurrency": 1, "poll_s": 0.05, "max_attempts": 1},
    }
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_batch_line_is_admitted_at_its_discounted_worst_case(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with margin_serve(db, tmp_path / "serve.log", config=_config(tmp_path), ready_s=60) as (url, _):
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:  # live: its full worst case does not fit
            client.chat.completions.create(
                model="priced", messages=[{"role": "user", "content": "hello there"}], max_tokens=4
            )
        assert refused.value.code == "budget_exceeded"
        upload = client.files.create(
            file=("in.jsonl", jsonl(line("only", model="priced", max_tokens=4))), purpose="batch"
        )
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while (current := client.batches.retrieve(batch.id)).status not in FINAL:
            assert time.monotonic() < deadline, current.status
            time.sleep(0.05)
        assert current.error_file_id is None, entries(client.files.content(current.error_file_id).content)
        assert current.status == "completed" and current.request_counts is not None
        assert current.request_counts.completed == 1
    connection = sqlite3.connect(db)
    try:
        query = "SELECT status, cost_nanousd, discount_nanousd FROM ledger WHERE batch_id = ?"
        ((status, cost, discount),) = connection.execute(query, (batch.id,)).fetchall()
        spent = connection.execute("SELECT sum(cost_nanousd) FROM ledger").fetchone()[0]
    finally:
        connection.close()
    assert status == "ok" and cost == discount > 0  # settled at half its price, the discount once
    assert spent <= BUDGET_NANOUSD
