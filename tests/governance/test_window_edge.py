"""A request that starts at the end of a budget's window and is admitted in the next is charged to the window
its ledger row is in: the row's `created_at` is when the request started, and admission took the time again.
Before, a request started at 12:59:59.999 and admitted at 13:00:00.001 (the 2 ms of its auth and routing) was
counted against 13:00's hourly budget while its row went to 12:00's: a 12:00 window already at its hard limit
admitted it, the ledger's 12:00 spent $0.03 of a $0.02 hard budget (and a 13:00 counter rebuilt from the ledger
no longer counted it). The gateway over ASGI, the two clocks set (as test_per_user_counters.py sets one)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import sqlalchemy as sa

from margin.ledger.models import ledger
from tests.helpers import fake_settings, gateway

CHAT = "/v1/chat/completions"
PRICE = {"input": "0", "output": "2500", "version": "t"}  # $0.0025 per output token: $0.01 a request below
HOURLY = {"name": "hourly", "scope": {"kind": "global"}, "usd": "0.02", "period": "hour", "mode": "hard"}
BODY = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
EDGE = (datetime.now(UTC) + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)  # an hour's end


def clock(at: datetime) -> Any:
    """A `datetime` whose `now()` is `at` (a module's clock, patched)."""

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return at

    return Clock


async def test_a_request_is_charged_to_the_window_it_started_in(db_path: Path) -> None:
    models = {"priced": {"backend": "api", "price": PRICE}}
    async with gateway(fake_settings(db_path, models=models, budgets=[HOURLY])) as gw:
        with mock.patch("margin.pipeline.values.datetime", clock(EDGE - timedelta(seconds=1))):
            assert [(await gw.http.post(CHAT, json=BODY)).status_code for _ in range(2)] == [200, 200]
        started, admitted = EDGE - timedelta(milliseconds=1), EDGE + timedelta(milliseconds=1)
        with (
            mock.patch("margin.pipeline.values.datetime", clock(started)),
            mock.patch("margin.pipeline.steps.admit.datetime", clock(admitted)),
        ):
            straddling = await gw.http.post(CHAT, json=BODY)
        await gw.services.drain()
        await gw.services.outbox.flush()
        async with gw.services.engine.connect() as connection:
            window = (ledger.c.created_at >= EDGE - timedelta(hours=1)) & (ledger.c.created_at < EDGE)
            spent = (await connection.execute(sa.select(sa.func.sum(ledger.c.cost_nanousd)).where(window))).scalar()
    # before: 200, and the ledger's hour spent $0.03 of its $0.02 hard budget
    assert straddling.status_code == 429 and straddling.json()["error"]["code"] == "budget_exceeded", straddling.text
    assert spent == 20_000_000
