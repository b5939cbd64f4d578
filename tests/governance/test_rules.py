"""Rules: scope matching, policy merging (strictest wins), calendar windows, spec validation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from margin.errors import InvalidRequest
from margin.governance.admission import counter_name, output_allowance, window
from margin.governance.rules import Subject, matches, merge_policies, parse_policy, parse_spec
from margin.specs import BudgetSpec, FlagSpec, Policy, Scope


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (Scope(kind="global"), True),
        (Scope(kind="team", value="search"), True),
        (Scope(kind="team", value="ads"), False),
        (Scope(kind="tag", value="customer=acme"), True),
        (Scope(kind="tag", value="customer=globex"), False),
        (Scope(kind="model", value="gpt-4o"), True),
        (Scope(kind="backend", value="openai"), True),
        (Scope(kind="key", value="k2"), False),
        (Scope(kind="org", value="acme-corp"), False),  # the subject has no org
    ],
)
def test_matches(scope: Scope, expected: bool) -> None:
    subject = Subject("k1", "search", None, {"customer": "acme"}, "gpt-4o", "openai")
    assert matches(scope, subject) is expected


def test_policies_merge_strictly() -> None:
    merged = merge_policies(
        [
            Policy(jurisdictions=["EU", "US"], pii="log", log_prompts=True),
            Policy(jurisdictions=["EU", "CH"], pii="off", injection="block"),  # cannot lower pii to off
            Policy(pii="redact", log_prompts=False, restore_pii=True),
        ]
    )
    assert merged.jurisdictions == ["EU"] and merged.pii == "redact" and merged.injection == "block"
    assert merged.log_prompts is False and merged.restore_pii is True


def test_model_lists_intersect_and_an_unlisted_level_inherits() -> None:
    """Every level listing models narrows the list; a level that lists none loosens nothing (before, `models` was
    no policy field)."""
    merged = merge_policies(
        [Policy(models=["a", "b", "c"]), Policy(pii="log"), Policy.model_validate({"models": ["c", "b", "z"]})]
    )
    assert merged.models == ["b", "c"] and merged.allowed_models == frozenset({"b", "c"})
    assert merge_policies([Policy(models=["a"]), Policy(models=["b"])]).allowed_models == frozenset()  # nothing
    assert merge_policies([Policy(pii="log")]).allowed_models is None  # no list: any model
    with pytest.raises(ValidationError):
        Policy.model_validate({"models": ["x"] * 257})
    with pytest.raises(ValidationError):
        Policy.model_validate({"models": ["two words"]})


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("hour", "2026-02-28T13:00:00", "2026-02-28T14:00:00"),
        ("day", "2026-02-28T00:00:00", "2026-03-01T00:00:00"),
        ("month", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
    ],
)
def test_windows_are_calendar_aligned_utc(period: str, start: str, end: str) -> None:
    now = datetime(2026, 2, 28, 13, 47, 12, tzinfo=UTC)
    got = window(period, now)
    assert got == (datetime.fromisoformat(start).replace(tzinfo=UTC), datetime.fromisoformat(end).replace(tzinfo=UTC))


def test_december_rolls_into_next_year_and_lifetime_has_no_window() -> None:
    assert window("month", datetime(2026, 12, 31, 23, 59, tzinfo=UTC))[1] == datetime(2027, 1, 1, tzinfo=UTC)
    budget = BudgetSpec(name="b", scope=Scope(kind="global"), usd=1, period="lifetime")
    assert window("lifetime", datetime.now(UTC)) == (None, None)
    assert counter_name(budget, None).startswith("b~") and counter_name(budget, None).endswith("@lifetime")


def test_a_budget_replaced_with_another_scope_or_unit_gets_a_counter_of_its_own() -> None:
    """The counter names what it adds up: the same name over another scope, org or unit is another counter
    (reconciled from the ledger), the same budget with another cap, mode or alert share is the same one."""
    team = BudgetSpec(name="b", scope=Scope(kind="team", value="a"), usd=1, period="lifetime")
    names = {
        counter_name(spec, None)
        for spec in (
            team,
            team.model_copy(update={"scope": Scope(kind="team", value="b")}),
            team.model_copy(update={"scope": Scope(kind="team", value="a", org="acme")}),
            team.model_copy(update={"scope": Scope(kind="key", value="a")}),
            team.model_copy(update={"usd": None, "tokens": 1}),
        )
    }
    assert len(names) == 5
    same = team.model_copy(update={"usd": 7, "mode": "soft", "alert_pct": 50})
    assert counter_name(same, None) == counter_name(team, None)


def test_output_allowance() -> None:
    assert output_allowance(100, 2048, 50, 4096) == 100
    assert output_allowance(None, 2048, 50, 4096) == 1998
    assert output_allowance(None, None, 50, 4096) == 4096


@pytest.mark.parametrize(
    "data",
    [
        {"name": "b", "scope": {"kind": "global"}},  # neither usd nor tokens
        {"name": "b", "scope": {"kind": "global"}, "usd": 1, "tokens": 5},
        {"name": "b", "scope": {"kind": "team"}, "usd": 1},  # team needs a value
        {"name": "b", "scope": {"kind": "tag", "value": "acme"}, "usd": 1},  # tag needs k=v
        {"name": "b", "scope": {"kind": "global"}, "usd": 1, "period": "week"},
        {"name": "b", "scope": {"kind": "global"}, "usd": 1, "colour": "red"},  # unknown key
    ],
)
def test_bad_budgets_are_rejected(data: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        parse_spec("budget", data)


def test_flag_and_policy_validation() -> None:
    with pytest.raises(InvalidRequest, match="force_model needs"):
        parse_spec("flag", {"name": "f", "target": {"kind": "global"}, "action": "force_model"})
    stray = {"name": "f", "target": {"kind": "global"}, "action": "disable", "model": "m", "max_tokens": 3}
    with pytest.raises(InvalidRequest, match=r"disable does not use `model` or `max_tokens`"):
        parse_spec("flag", stray)  # creating one (CLI, admin API): refused
    assert FlagSpec.model_validate(stray).unused_arguments() == ["`model`", "`max_tokens`"]  # loading: kept
    with pytest.raises(InvalidRequest, match="invalid policy"):
        parse_policy('{"pii": "shout"}')
    assert parse_policy('{"jurisdictions": ["EU"]}') == {"jurisdictions": ["EU"]}
    with pytest.raises(ValidationError):
        Scope(kind="global", value="x")
