"""Budgets and rate limits per end user (`user=*`, the OpenAI `user` field) and per tag value
(`tag=customer=*`), against a running `margin serve` over real HTTP with the official `openai` SDK: one
counter and bucket per value, refusals that name the rule and say it is per user, the counter rebuilt from
the ledger after a restart, no per-user series in `/metrics` nor values in `/admin/budgets`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

import openai
import pytest

from margin.governance.store import LocalStore
from tests.helpers import fake_settings
from tests.helpers import gateway as gateway_in_process
from tests.security.conftest import FAKE_CONFIG, Served, ServeFactory, serving_in

API = {"kind": "fake", "output_tokens": 4}
PRICED = {"backend": "api", "price": {"input": "1.00", "output": "2.00", "version": "t1"}}
USER_USD = {"name": "each-user", "scope": {"kind": "user", "value": "*"}, "usd": "0.0002", "period": "day"}
CUSTOMER_TOKENS = {"name": "each-customer", "scope": {"kind": "tag", "value": "customer=*"}, "tokens": 200,
                   "period": "day"}  # fmt: skip
USER_RPM = {"scope": {"kind": "user", "value": "*"}, "rpm": 3}
OVERRIDES: dict[str, Any] = {
    "backends": {**FAKE_CONFIG["backends"], "api": API},
    "models": {**FAKE_CONFIG["models"], "priced": PRICED},
    "budgets": [USER_USD, CUSTOMER_TOKENS],
    "tags": {"header_keys": ["customer"]},
}
KEYS = {"admin": ["--admin"], "app": ["--tag", "customer=*"]}


@pytest.fixture
def served(tmp_path: Path) -> ServeFactory:
    return serving_in(tmp_path)


Sdk = Callable[..., openai.OpenAI]


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    """`sdk(gw, key, customer="acme")`: an `openai` client of the gateway, closed after the test."""
    with ExitStack() as stack:

        def make(gw: Served, key: str, customer: str = "acme") -> openai.OpenAI:
            headers = {"x-margin-tags": f"customer={customer}"}
            client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, default_headers=headers)
            return stack.enter_context(client)

        yield make


def ask(client: openai.OpenAI, user: str | None, model: str = "priced") -> Any:
    extra = {} if user is None else {"user": user}
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, extra_body=extra
    )


def until_refused(client: openai.OpenAI, user: str | None, tries: int = 40) -> openai.APIStatusError:
    for _ in range(tries):
        try:
            ask(client, user)
        except openai.APIStatusError as exc:
            return exc
    pytest.fail(f"{user!r} was never refused in {tries} requests")


@pytest.fixture
def gateway(served: ServeFactory) -> Iterator[Served]:
    with served(OVERRIDES, keys=KEYS) as gw:
        yield gw


def test_each_user_has_its_own_usd_budget_and_a_restart_rebuilds_it(served: ServeFactory, sdk: Sdk) -> None:
    with served(OVERRIDES, keys=KEYS) as gw:
        keys = gw.keys
        client = sdk(gw, keys["app"], customer="c1")
        refused = until_refused(client, "alice")
        assert refused.status_code == 429
        error = refused.body["error"] if isinstance(refused.body, dict) and "error" in refused.body else refused.body
        assert isinstance(error, dict) and error["code"] == "budget_exceeded"
        assert "`each-user`" in error["message"] and "each end user separately" in error["message"]
        assert "bob" not in error["message"]
        assert ask(sdk(gw, keys["app"], customer="c2"), "bob").choices  # bob: his own counter, untouched
        with gw.client(keys["admin"]) as admin:
            listed = {b["name"]: b for b in admin.get("/admin/budgets").json()["data"]}
            metrics = admin.get("/metrics").text
        assert listed["each-user"]["each"] == "user" and listed["each-user"]["spent"] is None
        assert "u_" not in str(listed) and "alice" not in str(listed)
        assert 'budget="each-user"' in metrics and 'level="each"' in metrics
        assert "u_" not in metrics and "alice" not in metrics and "c1" not in metrics
    with served(OVERRIDES) as again:  # a new process: the counter is gone, rebuilt from the ledger
        with pytest.raises(openai.APIStatusError) as still:
            ask(sdk(again, keys["app"], customer="c3"), "alice")
        assert still.value.status_code == 429 and "each-user" in str(still.value.body)
        assert ask(sdk(again, keys["app"], customer="c4"), "bob").choices


def test_each_customer_value_has_its_own_token_budget(served: ServeFactory, sdk: Sdk) -> None:
    with served({**OVERRIDES, "budgets": [CUSTOMER_TOKENS]}, keys=KEYS) as gateway:
        _each_customer(gateway, sdk)


def test_a_restart_rebuilds_each_customer_counter_from_bound_rows_only(served: ServeFactory, sdk: Sdk) -> None:
    """After a restart each customer's counter is rebuilt from the ledger (through the `customer` tag index,
    margin.ledger.tag_index): acme, spent by the bound key, is still refused; globex, which a key without the
    tag bound sent many requests for as a label, still has its whole budget."""
    keys = {**KEYS, "labels": []}
    with served({**OVERRIDES, "budgets": [CUSTOMER_TOKENS]}, keys=keys) as gw:
        refused = until_refused(sdk(gw, gw.keys["app"], customer="acme"), None)
        assert refused.status_code == 429 and "each-customer" in str(refused.body)
        labels = sdk(gw, gw.keys["labels"], customer="globex")
        spent = sum(ask(labels, None).usage.total_tokens for _ in range(60))
        assert spent > CUSTOMER_TOKENS["tokens"]  # labels that would exhaust globex's budget if they counted
        issued = gw.keys
    with served({**OVERRIDES, "budgets": [CUSTOMER_TOKENS]}) as again:
        with pytest.raises(openai.APIStatusError) as still:
            ask(sdk(again, issued["app"], customer="acme"), None)
        assert still.value.status_code == 429 and "each-customer" in str(still.value.body)
        assert ask(sdk(again, issued["app"], customer="globex"), None).choices


def _each_customer(gateway: Served, sdk: Sdk) -> None:
    app = gateway.keys["app"]
    refused = until_refused(sdk(gateway, app, customer="acme"), None)
    assert refused.status_code == 429 and "each-customer" in str(refused.body)
    assert "each `customer` value separately" in str(refused.body)
    assert ask(sdk(gateway, app, customer="globex"), None).choices  # another customer: its own counter

    def usage(headers: dict[str, str]) -> Any:
        with gateway.client(app) as client:
            found = client.get("/v1/margin/usage", headers=headers).json()["budgets"]
        return {b["name"]: (b["each"], b["spent"]) for b in found}

    acme, globex = usage({"x-margin-tags": "customer=acme"}), usage({"x-margin-tags": "customer=globex"})
    assert acme["each-customer"][0] == "tag value" and int(acme["each-customer"][1]) > int(globex["each-customer"][1])
    assert usage({}) == {}  # no value named: the per-value budget is not listed


def test_a_request_without_user_is_not_under_a_per_user_budget(served: ServeFactory, sdk: Sdk) -> None:
    overrides = {**OVERRIDES, "budgets": [USER_USD]}
    with served(overrides, keys=KEYS) as gw:
        client = sdk(gw, gw.keys["app"])
        until_refused(client, "alice")
        for _ in range(15):  # far past what the per-user cap admits for one user
            assert ask(client, None).choices


def test_each_user_has_its_own_rate_limit(served: ServeFactory, sdk: Sdk) -> None:
    overrides = {**OVERRIDES, "budgets": [], "limits": [USER_RPM]}
    with served(overrides, keys=KEYS) as gw:
        client = sdk(gw, gw.keys["app"])
        for _ in range(3):
            assert ask(client, "alice").choices
        with pytest.raises(openai.RateLimitError) as limited:
            ask(client, "alice")
        assert "user=*" in str(limited.value.body) and "each end user separately" in str(limited.value.body)
        assert ask(client, "bob").choices


def test_hostile_users_are_refused_and_distinct_users_are_bounded(served: ServeFactory, sdk: Sdk) -> None:
    """Too long or control characters: 400 before any counter. Distinct users past
    `admission.max_budget_counters`: 503 budget_counters_full (fail closed), users already counted go on. A key
    reading the usage of any number of users (`/v1/margin/usage?user=`) takes none of those places."""
    overrides = {
        **OVERRIDES,
        "budgets": [{**USER_USD, "usd": "0.01"}],
        "limits": [USER_RPM],
        "admission": {"max_budget_counters": 5},
    }
    with served(overrides, keys=KEYS) as gw:
        client = sdk(gw, gw.keys["app"])
        with gw.client(gw.keys["app"]) as reader:  # reading a user's usage takes no counter's place
            for n in range(10):
                assert reader.get(f"/v1/margin/usage?user=reader-{n}").status_code == 200
        for user in ("x" * 10_000, "a\x00b", "a\nb"):
            with pytest.raises(openai.BadRequestError):
                ask(client, user)
        assert ask(client, "u" * 256).choices  # the bound itself is a user: counted under a digest
        for n in range(4):
            assert ask(client, f"user-{n}").choices
        with pytest.raises(openai.InternalServerError) as full:
            ask(client, "one-too-many")
        assert full.value.status_code == 503 and "budget_counters_full" in str(full.value.body)
        assert ask(client, "user-0").choices  # a counter it holds: admitted as before
        with gw.client(gw.keys["admin"]) as admin:
            assert admin.get("/healthz").status_code == 200


async def test_the_in_process_store_forgets_past_windows_and_idle_buckets(db_path: Path) -> None:
    """Counters of past windows and rate-limit buckets at rest are dropped by the reaper's sweep: many users
    hold memory for their window, not forever. (In process: the store's size is what is checked.)"""
    settings = fake_settings(
        db_path, budgets=[{**USER_USD, "usd": "1"}], limits=[USER_RPM], models={"priced": PRICED},
        backends={"api": API},
    )  # fmt: skip
    async with gateway_in_process(settings) as gw:
        for n in range(20):
            body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "user": f"user-{n}"}
            assert (await gw.http.post("/v1/chat/completions", json=body)).status_code == 200
        await gw.services.drain()
        store = gw.services.governance.store
        assert isinstance(store, LocalStore)
        assert store.size() == 40  # 20 counters, 20 buckets
        later = time.time() + 2 * 86_400 + 60  # past every window plus its day, every bucket long refilled
        with mock.patch("margin.governance.store.time.time", return_value=later):
            await store.reap()
        assert store.size() == 0


def test_admin_api_and_cli_take_the_new_scopes_and_refuse_nonsense(gateway: Served) -> None:
    with gateway.client(gateway.keys["admin"]) as admin:
        ok = admin.put("/admin/limits", json={"scope": {"kind": "tag", "value": "customer=*"}, "tpm": 1000})
        assert ok.status_code == 200, ok.text
        for scope in ({"kind": "user", "value": ""}, {"kind": "team", "value": "*"}, {"kind": "tag", "value": "*=a"}):
            bad = admin.put("/admin/budgets", json={"name": "bad", "scope": scope, "usd": 1})
            assert bad.status_code == 400, (scope, bad.text)
        flag = {"name": "f", "target": {"kind": "user", "value": "*"}, "action": "disable"}
        assert admin.put("/admin/flags", json=flag).status_code == 400
    made = gateway.cli("budgets", "set", "cli-each", "--scope", "user=*", "--usd", "1")
    assert made.returncode == 0, made.stderr
    refused = gateway.cli("budgets", "set", "cli-bad", "--scope", "key=*", "--usd", "1")
    assert refused.returncode != 0
