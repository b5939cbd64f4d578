"""Settlement in the cases that are easy to get wrong: a client that leaves mid-stream, a restart (spend
reconciled from the ledger), and rules reloaded from the config file while the gateway runs."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from margin.api import admin
from margin.app import _reconcile_budgets as reconcile_budgets
from margin.app import build_app
from margin.config import load_settings
from margin.economics.money import to_nanousd
from margin.errors import Overloaded
from tests.helpers import fake_settings, gateway, live_server, polls

CHAT = "/v1/chat/completions"
PRICE = {"input": "0", "output": "1000", "version": "t"}  # $0.001 per output token
BUDGET = {"name": "g", "scope": {"kind": "global"}, "usd": "0.05", "period": "month"}


def slow(db_path: Path, **overrides: Any) -> Any:
    backends = {"slow": {"kind": "fake", "output_tokens": 40, "tokens_per_s": 50}}
    models = {"m": {"backend": "slow", "price": PRICE}}
    return fake_settings(db_path, backends=backends, models=models, **overrides)


async def test_client_disconnect_settles_what_was_delivered(db_path: Path) -> None:
    app = build_app(slow(db_path, budgets=[BUDGET]))
    body = {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True, "max_tokens": 40}
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        async with http.stream("POST", CHAT, json=body) as response:
            lines = 0
            async for line in response.aiter_lines():
                lines += line.startswith("data: ")
                if lines == 3:
                    break
        services = app.state.services
        store = services.governance.store
        for _ in polls():
            if await store.pending() == 0:
                break
            await asyncio.sleep(0.02)
        rows = await _rows(services)
        assert len(rows) == 1 and rows[0].status == "client_closed"
        counters = await store.counters(await store_names(services))
        # the reservation ($0.040 worst case) was released; only the delivered tokens are spent
        assert list(counters.values()) == [(rows[0].cost_nanousd, 0)]
        assert 0 < rows[0].cost_nanousd < to_nanousd(Decimal("0.040"))


async def _rows(services: Any) -> list[Any]:
    import sqlalchemy as sa

    from margin.ledger.models import ledger

    for _ in polls():
        await services.drain()
        await services.outbox.flush()
        async with services.engine.connect() as connection:
            rows = list(await connection.execute(sa.select(ledger)))
        if rows:
            return rows
        await asyncio.sleep(0.02)
    return []


async def store_names(services: Any) -> list[str]:
    from datetime import UTC, datetime

    from margin.governance.admission import counter_name, window

    now = datetime.now(UTC)
    return [counter_name(b, window(b.period, now)[0]) for b in services.governance.rules.budgets]


async def test_spend_survives_a_restart(db_path: Path) -> None:
    fast = fake_settings(
        db_path,
        backends={"api": {"kind": "fake", "output_tokens": 20}},
        models={"m": {"backend": "api", "price": PRICE}},
        budgets=[BUDGET],
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "go"}], "max_tokens": 20}
    async with gateway(fast) as gw:
        assert [(await gw.http.post(CHAT, json=body)).status_code for _ in range(2)] == [200, 200]  # $0.04
    async with gateway(fast) as gw:  # a new process: counters start empty and are reconciled from the ledger
        refused = await gw.http.post(CHAT, json=body)
        assert refused.status_code == 429 and "spent $0.040000000" in refused.json()["error"]["message"]


async def test_config_reload_changes_rules_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "margin.yaml"
    data = {
        "storage": {"ledger": f"sqlite:///{tmp_path / 'l.db'}", "flush_interval_ms": 10},
        "backends": {"api": {"kind": "fake", "output_tokens": 2}},
        "models": {"m": {"backend": "api", "price": PRICE}},
    }
    path.write_text(yaml.safe_dump(data))
    app = build_app(load_settings(path), config_path=path)
    body = {"model": "m", "messages": [{"role": "user", "content": "go"}]}
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")
        async with http:
            assert (await http.post(CHAT, json=body)).status_code == 200
            flag = {"name": "off", "target": {"kind": "model", "value": "m"}, "action": "disable", "reason": "r"}
            path.write_text(yaml.safe_dump({**data, "flags": [flag]}))
            reload = await http.post("/admin/reload", json={})  # what SIGHUP does; open mode: no admin key needed
            assert reload.status_code == 200 and reload.json()["rules"]["flags"] == 1
            assert (await http.post(CHAT, json=body)).status_code == 403
            path.write_text("models: [not, a, mapping]\n")  # a broken file keeps the running rules
            broken = await http.post("/admin/reload", json={})
            assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_config"
            assert (await http.post(CHAT, json=body)).status_code == 403


async def test_a_store_down_while_counters_are_reconciled_at_start_is_one_line(
    db_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis or the ledger down while a starting gateway reconciles its budget counters (it is not waited on: a
    Redis frozen right after start, in a probe): the first use of each counter tries again, and the log says so
    in one line (it was a traceback, three chained exceptions long)."""
    settings = fake_settings(db_path, budgets=[{"name": "g", "scope": {"kind": "global"}, "usd": "1", "period": "day"}])
    async with gateway(settings) as gw:

        async def down(services: Any) -> Any:
            raise Overloaded("the budget and rate-limit store is unavailable", code="governance_unavailable")

        monkeypatch.setattr(admin, "budget_states", down)
        with caplog.at_level(logging.WARNING, logger="margin"):
            await reconcile_budgets(gw.services)
    records = [r for r in caplog.records if "reconciling the budget counters" in r.getMessage()]
    assert records and all(r.exc_info is None and "store is unavailable" in r.getMessage() for r in records)
