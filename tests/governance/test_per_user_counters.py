"""Per-user and per-tag-value counters in process (fake backends, the gateway over ASGI): exact amounts, the
next window admits again, per org × per value, and Redis losing the counters (rebuilt for that user from the
ledger). The HTTP behaviour against `margin serve` is in test_per_user.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args
from unittest import mock

import sqlalchemy as sa
from redis import asyncio as aioredis

from margin.governance.admission import counter_name, window
from margin.governance.rules import SHARED_KINDS, Part, Subject, partition, value_digest
from margin.specs import ORG_QUALIFIED, Scope, ScopeKind
from tests.governance.conftest import bearer, make_key
from tests.helpers import fake_settings, gateway

CHAT = "/v1/chat/completions"
PRICE = {"input": "0", "output": "2500", "version": "t"}  # $0.0025 per output token: $0.01 a request below
EACH_USER = {"name": "each-user", "scope": {"kind": "user", "value": "*"}, "usd": "0.02", "period": "day"}


def body(user: str | None = None) -> dict[str, Any]:
    extra = {} if user is None else {"user": user}
    return {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


def settings(db_path: Path, **overrides: Any) -> Any:
    models = {"priced": {"backend": "api", "price": PRICE}, "fake-chat": {"backend": "fake"}}
    return fake_settings(db_path, models=models, **overrides)


class _Tomorrow(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(days=1)


async def test_a_user_refused_today_is_admitted_in_the_next_window(db_path: Path) -> None:
    async with gateway(settings(db_path, budgets=[EACH_USER])) as gw:
        codes = [(await gw.http.post(CHAT, json=body("alice"))).status_code for _ in range(3)]
        assert codes == [200, 200, 429]  # 2 × $0.01 = alice's whole day
        assert (await gw.http.post(CHAT, json=body("bob"))).status_code == 200
        with mock.patch("margin.pipeline.values.datetime", _Tomorrow):  # the request starts tomorrow
            assert (await gw.http.post(CHAT, json=body("alice"))).status_code == 200
        await gw.services.drain()
        budget = gw.services.governance.rules.budgets[0]
        alice = Subject(user="alice", user_id=gw.services.settle.pseudonym("alice"))
        name = counter_name(budget, window("day", datetime.now(UTC))[0], partition(budget.scope, alice))
        assert (await gw.services.governance.store.counters([name]))[name] == (20_000_000, 0)
        assert "alice" not in name and value_digest(alice.user_id or "") in name


async def test_per_org_and_per_value_combine(db_path: Path) -> None:
    """`user=*` naming no org: alice of org acme and alice of org beta are two counters."""
    _, acme = make_key(db_path, name="a", org="acme")
    _, beta = make_key(db_path, name="b", org="beta")
    async with gateway(settings(db_path, budgets=[EACH_USER])) as gw:
        for _ in range(2):
            assert (await gw.http.post(CHAT, json=body("alice"), headers=bearer(acme))).status_code == 200
        over = await gw.http.post(CHAT, json=body("alice"), headers=bearer(acme))
        assert over.status_code == 429 and "each end user separately" in over.json()["error"]["message"]
        assert (await gw.http.post(CHAT, json=body("alice"), headers=bearer(beta))).status_code == 200
        mine = (await gw.http.get("/v1/margin/usage?user=alice", headers=bearer(acme))).json()["budgets"]
        assert [(b["name"], b["each"], b["spent"], b["org"]) for b in mine] == [
            ("each-user", "user", "0.020000000", "acme")
        ]
        theirs = (await gw.http.get("/v1/margin/usage?user=alice", headers=bearer(beta))).json()["budgets"]
        assert [(b["spent"], b["org"]) for b in theirs] == [("0.010000000", "beta")]
        assert (await gw.http.get("/v1/margin/usage", headers=bearer(acme))).json()["budgets"] == []
        admin = (await gw.http.get("/v1/margin/usage?user=" + "x" * 300, headers=bearer(acme))).status_code
        assert admin == 400


def test_partition_is_per_org_and_per_value() -> None:
    subject = Subject(org="acme", tags={"customer": "globex"}, user="alice", user_id="u_1")
    assert partition(Scope(kind="user", value="*"), subject) == Part("acme", "u_1")
    assert partition(Scope(kind="user", value="*", org="acme"), subject) == Part(None, "u_1")
    assert partition(Scope(kind="tag", value="customer=*"), subject) == Part("acme", "globex")
    assert partition(Scope(kind="tag", value="customer=globex"), subject) == Part("acme")
    assert partition(Scope(kind="team", value="t"), subject) == Part("acme")
    assert partition(Scope(kind="global"), subject) == Part()
    assert Part("acme", "globex").suffix() == f"#acme|{value_digest('globex')}"
    # every scope kind is either one shared counter or partitioned per org (and value): none falls through
    assert set(get_args(ScopeKind)) - SHARED_KINDS == set(ORG_QUALIFIED)


async def test_redis_losing_a_user_counter_rebuilds_it_from_the_ledger(db_path: Path, redis_url: str) -> None:
    async with gateway(settings(db_path, budgets=[EACH_USER], storage={"redis": redis_url})) as gw:
        client = aioredis.from_url(redis_url)
        try:
            await client.flushall()
            for _ in range(2):
                assert (await gw.http.post(CHAT, json=body("alice"))).status_code == 200
            await gw.services.drain()
            await client.flushall()  # Redis lost every counter
            assert (await gw.http.post(CHAT, json=body("alice"))).status_code == 429  # rebuilt: $0.02 spent
            assert (await gw.http.post(CHAT, json=body("bob"))).status_code == 200
            keys = [key.decode() if isinstance(key, bytes) else key for key in await client.keys("*")]
            assert keys and not any("alice" in key or "bob" in key for key in keys)
        finally:
            await client.aclose()


async def test_reading_budgets_reconciles_within_room_and_never_fails_on_the_ledger(db_path: Path) -> None:
    """`Governance.reconcile` (what `/admin/budgets` and the gauges call): a per-org budget over 20 orgs with
    `max_budget_counters: 10` reconciles 9 counters and leaves a tenth of the places to requests; with the ledger
    unreadable it reconciles nothing and raises nothing (the read shows the counters as the store has them)."""
    per_org = {"name": "per-team", "scope": {"kind": "team", "value": "t"}, "usd": "5", "period": "day"}
    async with gateway(settings(db_path, budgets=[per_org], admission={"max_budget_counters": 10})) as gw:
        governance, now = gw.services.governance, datetime.now(UTC)
        budget = governance.rules.budgets[0]
        await governance.reconcile([(budget, Part(f"org-{n}")) for n in range(20)], now)
        assert len(governance._known) == 9
        assert (await gw.http.post(CHAT, json=body())).status_code == 200  # a request still finds its place
        governance._known.clear()
        down = sa.exc.OperationalError("SELECT", {}, Exception("the ledger is down"))
        with (
            mock.patch("margin.governance.service.ledger_spent", side_effect=down),
            mock.patch("margin.governance.service.ledger_recorded", return_value={}),
        ):
            await governance.reconcile([(budget, Part("org-0"))], now)  # no exception
        assert governance._known == {}
