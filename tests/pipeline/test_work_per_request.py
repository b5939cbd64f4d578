"""What the request path computes once instead of per request (issue 14's CPU per request): each test fails
where the work is done again (or, for the route decision, where its positional build could go out of step)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from starlette.requests import Request as HttpRequest

from margin.api.edge import read_body
from margin.economics.money import usd_str
from margin.errors import PayloadTooLarge
from margin.governance import admission as adm
from margin.governance.rules import Subject
from margin.keys import KeyRecord, principal_of
from margin.pipeline.steps.route import Basis
from margin.pipeline.values import RouteDecision
from margin.specs import BudgetSpec, LimitSpec, Scope
from margin.types import Principal


def test_a_key_record_names_its_caller_once() -> None:
    """The cached key record builds its caller once: every request of the key gets that one value (equal to
    what was built per request before), and a record made from it (the previous secret's) gets its own."""
    record = KeyRecord("k1", "bot", "search", {"env": "prod"}, org="acme", is_admin=True, policy={"models": ["a"]})
    first = principal_of(record)
    assert first == Principal("k1", "bot", "search", {"env": "prod"}, "acme", True, {"models": ["a"]})
    assert principal_of(record) is first
    assert record == replace(record)  # the caller is not part of the record's value
    assert principal_of(replace(record, team="other")).team == "other"


def test_windows_price_a_budget_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Windows.hold` turns a budget's USD limit into nano-USD (and names its counter's basis) once per budget,
    not per request; a reloaded budget (a new spec, another limit) gets its own."""
    priced: list[str] = []
    limit = adm.budget_limit

    def counted(budget: BudgetSpec) -> int:
        priced.append(budget.name)
        return limit(budget)

    monkeypatch.setattr(adm, "budget_limit", counted)
    budget = BudgetSpec(name="b", scope=Scope(kind="team", value="t"), usd=Decimal("5"), period="day")
    windows, now = adm.Windows(), datetime.now(UTC)
    holds = [windows.hold(budget, now, 100, 7) for _ in range(5)]
    assert priced == ["b"] and {h.hold.limit for h in holds} == {5_000_000_000}
    reloaded = budget.model_copy(update={"usd": Decimal("2")})
    assert windows.hold(reloaded, now, 100, 7).hold.limit == 2_000_000_000
    assert windows.hold(budget, now, 100, 7) == adm.hold_for(budget, now, 100, 7)


def test_rate_checks_label_each_limit_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each limit's bucket label is computed once, returned in the order of the limits (admit maps the TPM
    ones to their settlement from it, instead of labelling every limit again)."""
    labelled: list[str] = []
    label = adm.limit_key

    def counted(limit: LimitSpec, subject: Subject) -> str:
        labelled.append(label(limit, subject))
        return labelled[-1]

    monkeypatch.setattr(adm, "limit_key", counted)
    limits = [
        LimitSpec(scope=Scope(kind="global"), rpm=10),
        LimitSpec(scope=Scope(kind="team", value="a"), tpm=1000),
        LimitSpec(scope=Scope(kind="team", value="b"), rpm=5, tpm=50),
    ]
    subject = Subject(key_id="k", team="a")
    checks, lenient, labels = adm.rate_checks(limits, 12, subject)
    assert labelled == labels == ["global", "team=a", "team=b"]
    assert [c.key for c in checks] == ["rpm:global", "tpm:team=a", "rpm:team=b", "tpm:team=b"]
    assert lenient == [False, True, False, True]


def test_the_route_decision_ends_with_the_basis() -> None:
    """The route step builds its decision positionally, the basis last: the two must keep their fields (and
    defaults) in the same order."""
    tail = RouteDecision._fields[-len(Basis._fields) :]
    assert tail == Basis._fields
    assert tuple(RouteDecision._field_defaults[name] for name in tail) == tuple(Basis())


async def test_the_body_limit_reads_the_header_map_it_is_given() -> None:
    """The inference routes pass the headers they already read (`header_map`): a declared length over the
    limit is refused from it, before any of the body is received."""
    received: list[Any] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"2")]}
    request = HttpRequest(scope, receive)
    with pytest.raises(PayloadTooLarge):
        await read_body(request, 100, {"content-length": "5000"})
    assert received == []
    assert await read_body(request, 100, {"content-length": "2"}) == b"{}"


@pytest.mark.parametrize("places", [9, 6, 2, 0])
def test_usd_strings_are_the_same_at_every_precision(places: int) -> None:
    amounts = [Decimal("0.0000114"), Decimal("1e-12"), Decimal("123.4567891235"), Decimal("-0.0000000005")]
    for amount in amounts:
        quantum = Decimal(1).scaleb(-places)
        assert usd_str(amount, places) == format(amount.quantize(quantum, rounding="ROUND_HALF_EVEN"), "f")
