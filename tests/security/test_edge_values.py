"""Values that are valid JSON and plausible but out of what a type holds (a date before year 1, an amount past
Decimal's exponent range, a digit that is not ASCII, a cap far above the spend) are answered 4xx, or held at
the bound the field documents: never a 500. Each was a 500 against a running gateway before (an audit of
2026-12-05), most of them for every later caller too (a stored rule, the budgets page)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.security.conftest import Served, ServeFactory

CHAT = "/v1/chat/completions"
HI = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
BUDGETS = [  # ordinary caps: a month's $100 against a few nano-dollars of spend overflowed the burn-rate date
    {"name": "month", "scope": {"kind": "global"}, "usd": "100", "period": "month"},
    {"name": "none", "scope": {"kind": "global"}, "usd": "1e12", "period": "day"},  # "no cap": past MAX_USD
    {"name": "tokens", "scope": {"kind": "global"}, "tokens": 100_000_000_000, "period": "lifetime"},
]


@pytest.fixture
def gw(served: ServeFactory) -> Iterator[Served]:
    models = {"fake-chat": {"backend": "fake", "price": {"input": "1", "output": "1"}}}
    with served({"budgets": BUDGETS, "models": models}, keys={"admin": ["--admin"], "user": []}) as running:
        yield running


def test_the_budgets_page_holds_caps_far_above_the_spend(gw: Served) -> None:
    with gw.client(gw.keys["user"]) as client:
        assert client.post(CHAT, json=HI).is_success
    with gw.client(gw.keys["admin"]) as admin:
        for path in ("/dashboard/api/budgets", "/dashboard/budgets"):
            page = admin.get(path)
            assert page.status_code == 200, (path, page.text[:300])
        rows = {row["name"]: row for row in admin.get("/dashboard/api/budgets").json()["budgets"]}
    assert set(rows) == {"month", "none", "tokens"} and rows["month"]["exhausts_at"] is None


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/files", {"limit": "\u00b2"}),  # str.isdigit says yes, int() says no
        ("/v1/batches", {"limit": "9" * 5000}),
        ("/v1/margin/usage", {"since": "99999999999d"}),
        ("/v1/margin/usage", {"since": "9" * 5000 + "d"}),
        ("/v1/margin/usage", {"since": "0001-01-01T00:00:00+14:00"}),  # before year 1 once in UTC
        ("/admin/usage", {"until": "9999-12-31T23:59:59-14:00"}),  # after year 9999 once in UTC
        ("/admin/usage", {"since": "9999-12-31T23:30:00"}),  # a whole hour from it is past year 9999
        ("/admin/usage", {"since": "9999-12-31T00:30:00", "by": "customer"}),  # and a whole day
        ("/admin/usage", {"since": "2026-11-16", "until": "2026-11-01"}),  # ends before it starts
        ("/v1/margin/usage", {"since": "2026-11-16", "until": "2026-11-01"}),  # a key's own: the same
        ("/v1/margin/usage", {"until": "2000-01-01"}),  # before its since's default, this month's start (was zeros)
    ],
)
def test_query_values_out_of_range_are_400(gw: Served, path: str, params: dict[str, str]) -> None:
    with gw.client(gw.keys["admin"]) as client:
        answer = client.get(path, params=params)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]["param"] in ({"limit", "since", "until"} | {None})


def test_a_window_from_before_year_1000_counts_the_rollups_rows(gw: Served) -> None:
    """The rollups hold their hours and days as text (`2026-11-02T13:00:00`) and a window's whole hours were
    written with strftime, whose %Y gives year 999 as `999`: it sorts after `2026`, so `since=0999-01-01`
    read nothing from the rollups and the usage of all time came back as zero requests."""
    with gw.client(gw.keys["user"]) as client:
        assert client.post(CHAT, json=HI).is_success
    with gw.client(gw.keys["admin"]) as admin:
        for _ in range(100):  # the row reaches the ledger (and its rollups) within a flush
            if admin.get("/admin/usage").json()["totals"]["requests"] == 1:
                break
            time.sleep(0.1)
        for since in ("1970-01-01T00:00:00", "0999-01-01T00:00:00", "0001-01-01T00:00:00"):
            totals = admin.get("/admin/usage", params={"since": since, "by": "model"}).json()["totals"]
            assert totals["requests"] == 1, since


@pytest.mark.parametrize("value", ["1e1000000", "-1e1000000", "9" * 1_000_000])
def test_a_feedback_value_past_decimals_range_is_400(gw: Served, value: str) -> None:
    with gw.client(gw.keys["user"]) as client:
        chat = client.post(CHAT, json=HI)
        sent = {"request_id": chat.headers["x-margin-request-id"], "success": True, "value": value}
        refused = client.post("/v1/margin/feedback", json=sent)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "value", refused.text[:300]


def test_token_caps_past_what_json_and_counters_hold_are_held_at_the_bound(gw: Served) -> None:
    # a JSON number past 64 bits (a string for it is refused now: admin values are not coerced)
    budget = {"name": "huge", "scope": {"kind": "team", "value": "t"}, "tokens": 99999999999999999999}
    flag = {"name": "cap", "target": {"kind": "global"}, "action": "cap_max_tokens", "max_tokens": 2**40}
    with gw.client(gw.keys["admin"]) as admin:
        saved = admin.put("/admin/budgets", json=budget)
        assert saved.status_code == 200 and saved.json()["tokens"] == 2**53, saved.text[:300]
        assert admin.put("/admin/flags", json=flag).json()["max_tokens"] == 2**31 - 1
        listed = admin.get("/admin/budgets")
        assert listed.status_code == 200 and {b["name"] for b in listed.json()["data"]} >= {"huge", "month"}
        assert admin.get("/dashboard/api/budgets").status_code == 200


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("limits", {"scope": {"kind": "team", "value": "t" * 150, "org": "o" * 20}, "rpm": 5}),  # its name: 176
        ("limits", {"scope": {"kind": "team", "value": "t" * 4_000_000}, "rpm": 5}),
        ("flags", {"name": "f", "target": {"kind": "global"}, "action": "force_model", "model": "m" * 4_000_000}),
    ],
)
def test_rule_names_and_values_fit_their_columns(gw: Served, kind: str, rule: dict[str, object]) -> None:
    """A stored rule is named by its scope in a String(160) column (PostgreSQL refused a longer one: a 500);
    a 4 MB scope value or flag model was stored on SQLite, and the model echoed in every request's 404."""
    with gw.client(gw.keys["admin"]) as admin:
        refused = admin.put(f"/admin/{kind}", json=rule)
    assert refused.status_code == 400, refused.text[:300]
    assert refused.json()["error"]["param"] in {"scope", "scope.value", "model"}, refused.text[:300]
