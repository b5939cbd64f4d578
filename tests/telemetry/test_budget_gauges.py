"""Budgets in `GET /metrics` (margin.telemetry.budgets): against a running `margin serve` over real HTTP, the
gauges read the same counters `/admin/budgets` shows (to the nano-USD), follow budgets made and deleted through
the admin API, are not multiplied by `--workers 2`, and a budget store that cannot be read leaves the rest of
the scrape served."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from margin.economics.money import to_nanousd
from tests.helpers import fake_settings, free_port, gateway
from tests.security.conftest import Served, ServeFactory, serving_in
from tests.security.waiting import wait_for
from tests.servers import redis_server

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "a b c"}]}
BUDGETS = [
    {"name": "all-usd", "scope": {"kind": "global"}, "usd": 5, "period": "month", "mode": "hard"},
    {"name": "chat-tokens", "scope": {"kind": "model", "value": "fake-chat"}, "tokens": 100000, "period": "day",
     "mode": "soft", "alert_pct": 75},
    {"name": "team-usd", "scope": {"kind": "team", "value": "t"}, "usd": 2, "period": "hour"},
    {"name": "ever", "scope": {"kind": "global"}, "tokens": 10**9, "period": "lifetime"},
]  # fmt: skip
KEYS = {
    "admin": ["--admin"],
    "a": ["--team", "t", "--org", "acme"],
    "b": ["--team", "t", "--org", "beta"],
    "c": ["--team", "t"],  # in no org: the per-org budget's counter of callers in no org
}
Samples = dict[tuple[str, ...], float]


@pytest.fixture
def served(tmp_path: Path) -> ServeFactory:
    return serving_in(tmp_path)


def scrape(gw: Served, key: str) -> dict[str, Any]:
    """The scrape's families by name (a fresh connection: with workers, any of them may answer)."""
    with gw.client(key) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {f.name: f for f in text_string_to_metric_families(answer.text)}


def samples(families: dict[str, Any], name: str) -> Samples:
    """A budget family's values by (budget, org, level)."""
    found = families.get(name)
    return {} if found is None else {(s.labels["budget"], s.labels["org"], s.labels["level"]): s.value
                                     for s in found.samples}  # fmt: skip


def admin_budgets(gw: Served, key: str) -> dict[str, Any]:
    with gw.client(key) as client:
        return {b["name"]: b for b in client.get("/admin/budgets").json()["data"]}


def settled(gw: Served, key: str) -> bool:
    return all(Decimal(str(b["reserved"])) == 0 for b in admin_budgets(gw, key).values())


def amount(budget: dict[str, Any], value: Any) -> int:
    """An `/admin/budgets` amount as the gauges show it: nano-USD for USD budgets, tokens for token budgets."""
    return to_nanousd(Decimal(value)) if budget["unit"] == "usd" else int(value)


def _requests(gw: Served, key: str, count: int) -> None:
    for _ in range(count):
        with gw.client(key) as client:  # a fresh connection each: with workers, either may take it
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_budget_gauges_match_admin_budgets(served: ServeFactory) -> None:
    with served({"budgets": BUDGETS}, keys=KEYS) as gw:
        admin = gw.keys["admin"]
        _requests(gw, gw.keys["a"], 3)
        _requests(gw, gw.keys["b"], 2)
        _requests(gw, gw.keys["c"], 1)
        wait_for(lambda: settled(gw, admin), "every reservation settled")
        listed, families = admin_budgets(gw, admin), scrape(gw, admin)
        assert [s.value for s in families["margin_budget_read_failed"].samples] == [0.0]
        spent, limit = samples(families, "margin_budget_spent"), samples(families, "margin_budget_limit")
        reserved = samples(families, "margin_budget_reserved")
        resets = samples(families, "margin_budget_window_reset_timestamp_seconds")
        for name in ("all-usd", "chat-tokens", "ever"):
            entry = listed[name]
            assert spent[(name, "", "budget")] == amount(entry, entry["spent"]) > 0
            assert limit[(name, "", "budget")] == amount(entry, entry["usd"] or entry["tokens"])
            assert reserved[(name, "", "budget")] == 0
        assert limit[("all-usd", "", "budget")] == 5 * 10**9 and limit[("chat-tokens", "", "budget")] == 100000
        assert resets[("all-usd", "", "budget")] == datetime.fromisoformat(listed["all-usd"]["resets_at"]).timestamp()
        assert ("ever", "", "budget") not in resets  # a lifetime budget never resets
        assert samples(families, "margin_budget_alert_ratio")[("chat-tokens", "", "budget")] == 0.75
        labels = next(s.labels for s in families["margin_budget_spent"].samples if s.labels["budget"] == "chat-tokens")
        assert labels == {"budget": "chat-tokens", "org": "", "unit": "tokens", "mode": "soft", "period": "day",
                          "level": "budget"}  # fmt: skip
        team = listed["team-usd"]  # per org: each org's counter and their total (no limit of its own)
        by_org = {o["org"] or "": amount(team, o["spent"]) for o in team["by_org"]}
        assert set(by_org) == {"acme", "beta", ""} and all(by_org.values())  # "": the keys in no org
        assert {org: spent[("team-usd", org, "org")] for org in by_org} == by_org
        assert spent[("team-usd", "", "total")] == amount(team, team["spent"]) == sum(by_org.values())
        assert ("team-usd", "", "total") not in limit and limit[("team-usd", "acme", "org")] == 2 * 10**9
        assert families["margin_requests"].samples  # the other families are still there


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "two-workers"])
def test_a_restarted_gateway_shows_what_was_spent_before_any_request(served: ServeFactory, workers: list[str]) -> None:
    """The counters live in the process (or the supervisor's embedded Redis): after a restart, every budget's
    gauges and `/admin/budgets` show the ledger's spend from the first scrape, with no request made since.
    Before, each counter read 0 until a request used it."""
    with served({"budgets": BUDGETS}, keys=KEYS, extra=workers) as gw:
        _requests(gw, gw.keys["a"], 3)
        _requests(gw, gw.keys["b"], 2)
        _requests(gw, gw.keys["c"], 1)
        wait_for(lambda: settled(gw, gw.keys["admin"]), "every reservation settled")
        before = samples(scrape(gw, gw.keys["admin"]), "margin_budget_spent")
        listed = admin_budgets(gw, gw.keys["admin"])
    assert len(before) == 7 and all(before.values())  # 3 budgets, the per-org one's 3 orgs and total
    with served({"budgets": BUDGETS}, keys={"admin": ["--admin"]}, extra=workers) as gw:
        admin = gw.keys["admin"]
        wait_for(lambda: samples(scrape(gw, admin), "margin_budget_spent") == before, "the spend back", 20)
        again = admin_budgets(gw, admin)
        assert {n: (b["spent"], b.get("by_org")) for n, b in again.items()} == {
            n: (b["spent"], b.get("by_org")) for n, b in listed.items()
        }


def test_budgets_made_and_deleted_through_the_admin_api(served: ServeFactory) -> None:
    with served({"budgets": BUDGETS[:1]}, keys={"admin": ["--admin"], "user": []}) as gw:
        admin = gw.keys["admin"]
        new = {"name": "made-live", "scope": {"kind": "global"}, "usd": "0.5", "period": "day", "mode": "hard"}
        with gw.client(admin) as client:
            assert client.put("/admin/budgets", json=new).status_code == 200
        limit = samples(scrape(gw, admin), "margin_budget_limit")
        assert limit[("made-live", "", "budget")] == 5 * 10**8 and ("all-usd", "", "budget") in limit
        with gw.client(admin) as client:
            assert client.delete("/admin/budgets/made-live").status_code == 200
        families = scrape(gw, admin)
        budget_families = [name for name in families if name.startswith("margin_budget_") and "failed" not in name]
        assert len(budget_families) == 5
        assert all(("made-live", "", "budget") not in samples(families, name) for name in budget_families)
        assert ("all-usd", "", "budget") in samples(families, "margin_budget_spent")
        with gw.client(gw.keys["user"]) as client:  # a key that is no admin's gets what it got before: 403
            refused = client.get("/metrics")
        assert refused.status_code == 403 and "margin_budget" not in refused.text


def test_workers_report_the_one_shared_spend(served: ServeFactory) -> None:
    """`--workers 2`: whichever worker answers, the spent series is the budget's spend (the ledger's), not a
    worker's share nor the sum of both workers' reports."""
    with served({"budgets": BUDGETS[:1]}, keys={"admin": ["--admin"]}, extra=["--workers", "2"]) as gw:
        admin = gw.keys["admin"]
        pids: set[int] = set()

        def both_answer() -> bool:  # the second worker may still be starting when the first answers
            with gw.client(admin) as client:  # the pid is an operator's detail
                pids.add(client.get("/healthz").json()["pid"])
            return len(pids) == 2

        wait_for(both_answer, "both workers answering", timeout_s=60)
        _requests(gw, admin, 12)
        wait_for(lambda: settled(gw, admin) and len(gw.rows()) == 12, "the settlements and the ledger rows")
        true_spend = sum(row.cost_nanousd for row in gw.rows())
        assert true_spend > 0
        entry = admin_budgets(gw, admin)["all-usd"]
        assert amount(entry, entry["spent"]) == true_spend
        seen = [samples(scrape(gw, admin), "margin_budget_spent")[("all-usd", "", "budget")] for _ in range(6)]
        assert seen == [true_spend] * 6


def test_a_store_that_cannot_be_read_leaves_the_scrape_served(served: ServeFactory, tmp_path: Path) -> None:
    with ExitStack() as redis:
        url = redis.enter_context(redis_server(free_port(), tmp_path))
        storage = {"flush_interval_ms": 10, "redis": url}
        with served({"budgets": BUDGETS[:1], "storage": storage}, keys={"admin": ["--admin"]}) as gw:
            admin = gw.keys["admin"]
            _requests(gw, admin, 1)
            before = scrape(gw, admin)
            assert [s.value for s in before["margin_budget_read_failed"].samples] == [0.0]
            assert ("all-usd", "", "budget") in samples(before, "margin_budget_spent")
            redis.close()  # Redis stops; the gateway runs on
            after = scrape(gw, admin)
            assert [s.value for s in after["margin_budget_read_failed"].samples] == [1.0]
            assert samples(after, "margin_budget_spent") == {} and samples(after, "margin_budget_limit") == {}
            assert after["margin_requests"].samples and "margin_ledger_pending_rows" in after


def _failed(text: str) -> list[float]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["margin_requests"].samples  # the rest of the scrape is there
    return [s.value for s in families["margin_budget_read_failed"].samples]


async def test_a_failing_or_hanging_counter_read_is_reported_not_raised(db_path: Path) -> None:
    async def broken(store: Any, names: Any) -> Any:
        raise RuntimeError("store down")

    async def hangs(store: Any, names: Any) -> Any:
        await asyncio.Event().wait()

    async with gateway(fake_settings(db_path, budgets=BUDGETS[:1])) as gw:
        assert (await gw.http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        store = type(gw.services.governance.store)  # a slotted class: its method is patched, for this test
        assert _failed((await gw.http.get("/metrics")).text) == [0.0]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store, "counters", broken)
            scraped = await gw.http.get("/metrics")
            assert scraped.status_code == 200 and _failed(scraped.text) == [1.0]
            patch.setattr(store, "counters", hangs)
            metrics = gw.services.telemetry.metrics
            assert metrics is not None
            patch.setattr(metrics.budgets, "read_timeout_s", 0.2)
            scraped = await gw.http.get("/metrics")
            assert scraped.status_code == 200 and _failed(scraped.text) == [1.0]
        assert _failed((await gw.http.get("/metrics")).text) == [0.0]  # the hung read ended: the next one reads
