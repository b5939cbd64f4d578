"""The ledger records the busy time billed to self-hosted requests (for utilization), and none for API ones;
the rollup trigger counts what the gateway writes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from margin.ledger import db
from margin.ledger.models import ledger_hourly
from margin.report.queries import Window, summarize
from tests.helpers import fake_settings, gateway

CHAT = "/v1/chat/completions"


async def test_busy_ms_on_self_hosted_rows_only(db_path: Path) -> None:
    settings = fake_settings(db_path, backends={"fake": {"kind": "fake", "tokens_per_s": 200, "output_tokens": 4,
                                                          "hardware": {"usd_per_hour": "3.60"}}})  # fmt: skip
    async with gateway(settings) as gw:
        for model in ("fake-chat", "priced"):
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            assert (await gw.http.post(CHAT, json=body)).status_code == 200
        rows = {r.model: r for r in await gw.rows()}
    hosted, api = rows["fake-chat"], rows["priced"]
    assert api.busy_ms is None
    assert hosted.busy_ms is not None and hosted.busy_ms >= 10.0  # 4 tokens at 200/s, at least 15 ms of decode
    # the request was billed exactly for that busy time at $3.60/h
    assert abs(Decimal(hosted.cost_nanousd) - Decimal(hosted.busy_ms) * 1000) <= 1000
    engine = db.make_sync_engine(settings.storage.ledger)
    with engine.connect() as connection:
        rolled = connection.execute(sa.select(sa.func.sum(ledger_hourly.c.requests))).scalar()
        busy = connection.execute(sa.select(sa.func.sum(ledger_hourly.c.busy_us))).scalar()
    by_rows = summarize(engine, Window(rollup=False))["totals"]
    by_rollup = summarize(engine, Window())["totals"]
    engine.dispose()
    # rows without busy_ms (written before it existed, or API backends) count their backend wait instead
    # (integer microseconds, each row rounded half up)
    assert rolled == 2 and busy == int(hosted.busy_ms * 1000 + 0.5) + int(api.backend_ms * 1000 + 0.5)
    assert by_rows == by_rollup
