"""A usage breakdown over HTTP lists at most `limit` groups (default 1,000): a key can make a group per request
(`user`, a tag), and the whole answer is built in memory (the ranking and the cut run in SQL, so the read holds
`limit` groups: tests/report/test_capped_breakdown.py). The rest are added up under `others`, so the groups
and `others` still add up to the totals. Against a running gateway, with the official SDK's `user` field."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from margin.report.queries import GROUP_LIMIT, MAX_GROUP_LIMIT
from tests.security.conftest import Served, serving_in

USERS = GROUP_LIMIT + 150


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    start = serving_in(tmp_path_factory.mktemp("bounds"))
    models = {"fake-chat": {"backend": "fake", "price": {"input": "1", "output": "2"}}}
    with start({"models": models}, keys={"admin": ["--admin"], "user": []}) as running:
        with running.client(running.keys["user"]) as client:
            for n in range(USERS):  # one distinct `user` each (the ledger keeps a pseudonym of it)
                body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "user": f"u{n}"}
                assert client.post("/v1/chat/completions", json=body).is_success
            deadline = time.monotonic() + 30
            while client.get("/v1/margin/usage").json()["totals"]["requests"] < USERS:
                assert time.monotonic() < deadline, "the ledger did not take every row"
                time.sleep(0.1)
        yield running


def _adds_up(answer: dict[str, Any]) -> None:
    parts = [*answer["groups"], answer["others"]]
    for name in ("requests", "input_tokens", "output_tokens"):
        assert sum(part[name] for part in parts) == answer["totals"][name], name
    assert sum(Decimal(part["cost_usd"]) for part in parts) == Decimal(answer["totals"]["cost_usd"])


@pytest.mark.parametrize("path", ["/v1/margin/usage", "/admin/usage"])
def test_a_breakdown_lists_a_thousand_groups_and_adds_up_the_rest(gw: Served, path: str) -> None:
    with gw.client(gw.keys["user" if path.startswith("/v1") else "admin"]) as client:
        answer = client.get(path, params={"by": "user"}).json()
        few = client.get(path, params={"by": "user", "limit": "10"}).json()
        every = client.get(path, params={"by": "user", "limit": str(MAX_GROUP_LIMIT)}).json()
    assert answer["groups_total"] == USERS and len(answer["groups"]) == GROUP_LIMIT
    assert answer["others"]["groups"] == USERS - GROUP_LIMIT
    _adds_up(answer)
    assert len(few["groups"]) == 10 and few["others"]["groups"] == USERS - 10
    assert few["groups"] == answer["groups"][:10]  # the same ranking: cost, then requests, then key
    _adds_up(few)
    assert len(every["groups"]) == USERS and every["others"] is None
    with gw.client(gw.keys["admin"]) as client:
        empty = client.get("/admin/usage", params={"by": "user", "limit": ""}).json()  # as an empty `since`
    assert len(empty["groups"]) == GROUP_LIMIT


def test_the_dashboards_breakdown_is_bounded_too(gw: Served) -> None:
    """The dashboard's breakdown JSON (by a tag an admin picks): the same cap, the same `others`."""
    with gw.client(gw.keys["admin"]) as client:
        body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
        for n in range(GROUP_LIMIT + 5):  # one feature each, through the tag header
            tagged = client.post("/v1/chat/completions", json=body, headers={"x-margin-tags": f"feature=f{n}"})
            assert tagged.is_success
        deadline = time.monotonic() + 30
        while True:  # until every row is in (more than 1,000 groups come before the last row)
            page = client.get("/dashboard/api/breakdown", params={"by": "feature"}).json()
            if page["totals"]["requests"] == USERS + GROUP_LIMIT + 5:
                break
            assert time.monotonic() < deadline, "the ledger did not take every row"
            time.sleep(0.1)
    assert len(page["groups"]) == GROUP_LIMIT and page["others"]["groups"] == 6  # 1,005 features and "none"
    assert page["groups_total"] == GROUP_LIMIT + page["others"]["groups"]
    assert sum(g["requests"] for g in page["groups"]) + page["others"]["requests"] == page["totals"]["requests"]
    with gw.client(gw.keys["admin"]) as client:
        few = client.get("/dashboard/api/breakdown", params={"by": "feature", "limit": "3"}).json()
        bad = client.get("/dashboard/api/breakdown", params={"by": "feature", "limit": "0"})
    assert few["groups"] == page["groups"][:3] and few["others"]["groups"] == page["groups_total"] - 3
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


@pytest.mark.parametrize("limit", ["0", "-1", str(MAX_GROUP_LIMIT + 1), "9" * 5000, "1e3", "\u0661", "ten", " 5"])
def test_a_limit_out_of_range_is_400(gw: Served, limit: str) -> None:
    with gw.client(gw.keys["user"]) as client:
        answer: httpx.Response = client.get("/v1/margin/usage", params={"by": "user", "limit": limit})
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]["param"] == "limit"


def test_the_dashboards_margin_page_is_bounded_too(gw: Served) -> None:
    """`/dashboard/api/margin?by=customer` (and `by=feature`) listed every group, each read and built in memory:
    a key that names a new `customer` on each request made one per request (1,156 here; a month of them, a
    million). Now the first 1,000 by cost, as the breakdown's, the rest under `others`; it still adds up."""
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    with gw.client(gw.keys["user"]) as client:
        for n in range(GROUP_LIMIT + 5):  # a customer each, through the tag header
            tagged = client.post("/v1/chat/completions", json=body, headers={"x-margin-tags": f"customer=c{n}"})
            assert tagged.is_success
        deadline = time.monotonic() + 30
        while (totals := client.get("/v1/margin/usage").json()["totals"])["requests"] < USERS + GROUP_LIMIT + 5:
            assert time.monotonic() < deadline, "the ledger did not take every row"
            time.sleep(0.1)
        page = client.get("/dashboard/api/margin", params={"by": "customer"}).json()["margins"]
        few = client.get("/dashboard/api/margin", params={"by": "customer", "limit": "3"}).json()["margins"]
        html = client.get("/dashboard/margin", params={"by": "customer"})
    assert len(page["groups"]) == GROUP_LIMIT and page["groups_total"] == GROUP_LIMIT + 6  # and no customer
    assert page["others"]["groups"] == 6 and few["groups"] == page["groups"][:3]
    parts = [*page["groups"], page["others"]]
    assert sum(part["requests"] for part in parts) == totals["requests"]
    assert sum(Decimal(part["cost_usd"]) for part in parts) == Decimal(totals["cost_usd"])
    assert html.status_code == 200 and "the first 1,000" in html.text
