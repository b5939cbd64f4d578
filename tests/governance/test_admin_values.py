"""The admin API's bodies are validated strictly, against a running `margin serve` over real HTTP: a value of
another JSON type is a 400 naming the field, never coerced. Before, pydantic's lax mode read `"rpm": true` as
1, `"admin": "true"` as an admin key, `"enabled": "false"` as false and `2.0` where an integer is meant as 2;
and a `usd` given as a JSON number went through a binary float (`12345678.123456789` was stored as
`12345678.12345679`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.governance.conftest import served_with_admin

CONFIG = {"backends": {"fake": {"kind": "fake"}}, "models": {"fake-chat": {"backend": "fake"}}}
GLOBAL = {"kind": "global"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    with served_with_admin(tmp_path_factory.mktemp("admin-values"), CONFIG) as (base, _, admin):
        yield base, admin


def _refused(answer: httpx.Response, param: str) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_request", error
    assert error["message"].count(param) >= 1 and "Value error" not in error["message"], error


WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("limits", {"scope": GLOBAL, "rpm": True}, "rpm"),
    ("limits", {"scope": GLOBAL, "rpm": 2.0}, "rpm"),
    ("limits", {"scope": GLOBAL, "rpm": 2.5}, "rpm"),
    ("limits", {"scope": GLOBAL, "tpm": "100"}, "tpm"),
    ("limits", {"scope": {"kind": "team", "value": 7}, "rpm": 1}, "scope.value"),
    ("budgets", {"name": "b", "scope": GLOBAL, "usd": True}, "usd"),
    ("budgets", {"name": "b", "scope": GLOBAL, "usd": " 5"}, "usd"),
    ("budgets", {"name": "b", "scope": GLOBAL, "usd": "1_000"}, "usd"),
    ("budgets", {"name": "b", "scope": GLOBAL, "tokens": 1e3}, "tokens"),
    ("budgets", {"name": "b", "scope": GLOBAL, "usd": "5", "alert_pct": 50.0}, "alert_pct"),
    ("flags", {"name": "f", "target": GLOBAL, "action": "disable", "enabled": "false"}, "enabled"),
    ("flags", {"name": "f", "target": GLOBAL, "action": "disable", "enabled": 0}, "enabled"),
    ("flags", {"name": "f", "target": GLOBAL, "action": "cap_max_tokens", "max_tokens": "64"}, "max_tokens"),
]


@pytest.mark.parametrize(("kind", "body", "param"), WRONG_TYPES)
def test_a_rule_of_the_wrong_type_is_refused_naming_its_field(
    served: tuple[str, dict[str, str]], kind: str, body: dict[str, Any], param: str
) -> None:
    base, admin = served
    before = httpx.get(f"{base}/admin/{kind}", headers=admin).json()["data"]
    _refused(httpx.put(f"{base}/admin/{kind}", json=body, headers=admin), param)
    assert httpx.get(f"{base}/admin/{kind}", headers=admin).json()["data"] == before  # nothing stored


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "k", "admin": "true"}, "admin"),
        ({"name": "k", "admin": 1}, "admin"),
        ({"name": "k", "expires_in_s": 3600.0}, "expires_in_s"),
        ({"name": "k", "expires_in_s": "3600"}, "expires_in_s"),
        ({"name": "k", "expires_at": 1900000000}, "expires_at"),
        ({"name": "k", "tags": {"feature": 1}}, "tags.feature"),
        ({"name": "k", "policy": {"log_prompts": "yes"}}, "policy.log_prompts"),
        ({"name": 5}, "name"),
    ],
)
def test_a_key_of_the_wrong_type_is_refused_naming_its_field(
    served: tuple[str, dict[str, str]], body: dict[str, Any], param: str
) -> None:
    base, admin = served
    before = httpx.get(f"{base}/admin/keys", headers=admin).json()["data"]
    _refused(httpx.post(f"{base}/admin/keys", json=body, headers=admin), param)
    assert len(httpx.get(f"{base}/admin/keys", headers=admin).json()["data"]) == len(before)  # nothing created


def test_a_rotation_of_the_wrong_type_is_refused(served: tuple[str, dict[str, str]]) -> None:
    base, admin = served
    root = httpx.get(f"{base}/admin/keys", headers=admin).json()["data"][0]["id"]
    for grace in (True, 60.0, "60"):
        _refused(httpx.post(f"{base}/admin/keys/{root}/rotate", json={"grace_s": grace}, headers=admin), "grace_s")


def test_well_typed_values_are_still_taken(served: tuple[str, dict[str, str]]) -> None:
    base, admin = served
    made = httpx.post(
        f"{base}/admin/keys",
        json={"name": "typed", "admin": False, "expires_at": "2030-01-01T00:00:00Z", "policy": {"log_prompts": True}},
        headers=admin,
    )
    assert made.status_code == 201 and made.json()["expires_at"] == "2030-01-01T00:00:00+00:00", made.text
    limit = httpx.put(f"{base}/admin/limits", json={"scope": {"kind": "key", "value": "k1"}, "rpm": 5}, headers=admin)
    assert limit.status_code == 200 and limit.json()["rpm"] == 5
    flag = {"name": "f-ok", "target": GLOBAL, "action": "disable", "enabled": False}
    assert httpx.put(f"{base}/admin/flags", json=flag, headers=admin).json()["enabled"] is False
    httpx.delete(f"{base}/admin/keys/{made.json()['id']}", headers=admin)
    httpx.delete(f"{base}/admin/limits/key=k1", headers=admin)
    httpx.delete(f"{base}/admin/flags/f-ok", headers=admin)


@pytest.mark.parametrize(
    ("usd", "stored"),
    [
        ("12345678.123456789", "12345678.123456789"),  # a JSON number of 17 digits: a double holds ~16
        ("0.1", "0.1"),
        ("5", "5"),
        ('"12345678.123456789"', "12345678.123456789"),  # a decimal string, as the listing shows it
        ('"1e3"', "1E+3"),
    ],
)
def test_usd_is_read_exactly_as_a_number_or_a_string(served: tuple[str, dict[str, str]], usd: str, stored: str) -> None:
    base, admin = served
    body = '{"name": "exact", "scope": {"kind": "global"}, "usd": ' + usd + ', "period": "day"}'
    saved = httpx.put(f"{base}/admin/budgets", content=body, headers={**admin, **JSON})
    assert saved.status_code == 200 and saved.json()["usd"] == stored, saved.text
    listed = httpx.get(f"{base}/admin/budgets", headers=admin).json()["data"]
    assert [b["usd"] for b in listed if b["name"] == "exact"] == [stored]
    assert httpx.delete(f"{base}/admin/budgets/exact", headers=admin).status_code == 200
