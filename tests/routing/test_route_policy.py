"""`cheapest-adequate` routing through the gateway with a scripted scorer (the learned router has its own
tests): the chosen model, the score and the counterfactual cost land in the ledger and the report."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from margin.config import parse_settings
from margin.errors import ConfigError
from tests.governance.conftest import bearer, make_key
from tests.helpers import fake_settings, gateway

CHAT = "/v1/chat/completions"


class WordScorer:
    """P(cheap is adequate) = 0.9 when the prompt says `easy`, else 0.1; thresholds by target."""

    def p_weak_ok(self, prompt: str) -> float:
        return 0.9 if "easy" in prompt else 0.1

    def threshold_for(self, target: str, value: float) -> float:
        return {"strong_share": 1 - value, "quality_floor": value}[target]


def settings(db_path: Path, **overrides: Any) -> Any:
    regions = {"eu": {"jurisdiction": "EU", "grid_zone": "FRA"}, "us": {"jurisdiction": "US", "grid_zone": "USA"}}
    backends = {
        "small": {"kind": "fake", "output_tokens": 4, "region": "eu"},
        "big": {"kind": "fake", "output_tokens": 4, "region": "us"},
    }
    models = {
        "cheap": {"backend": "small", "price": {"input": "0", "output": "1000"}},
        "strong": {"backend": "big", "price": {"input": "0", "output": "10000"}},
    }
    routes = {"auto": {"ladder": ["cheap", "strong"], "strong_share": 0.5}}
    return fake_settings(db_path, regions=regions, backends=backends, models=models, routes=routes, **overrides)


def ask(text: str) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 4}


async def test_easy_prompts_go_to_the_cheap_model(db_path: Path) -> None:
    async with gateway(settings(db_path)) as gw:
        gw.services.route_policy.loader = lambda spec: WordScorer()
        easy = await gw.http.post(CHAT, json=ask("an easy one"))
        hard = await gw.http.post(CHAT, json=ask("prove the theorem"))
        assert easy.json()["model"] == "cheap" and hard.json()["model"] == "strong"
        rows = await gw.rows()
        assert [(r.model, r.requested_model, r.router_score) for r in rows] == [
            ("cheap", "auto", 0.9),
            ("strong", "auto", 0.1),
        ]
        assert rows[0].counterfactual_nanousd == 10 * rows[0].cost_nanousd  # strong is 10× the price
        assert rows[1].counterfactual_nanousd == rows[1].cost_nanousd
        models = (await gw.http.get("/v1/models")).json()["data"]
        assert "auto" in {m["id"] for m in models}


async def test_report_shows_routing_savings(db_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from margin.cli import app

    async with gateway(settings(db_path)) as gw:
        gw.services.route_policy.loader = lambda spec: WordScorer()
        for _ in range(3):
            await gw.http.post(CHAT, json=ask("easy"))
        rows = await gw.rows()
    report = json.loads(CliRunner().invoke(app, ["report", "--db", str(db_path), "--json"]).output)
    saved = sum(r.counterfactual_nanousd - r.cost_nanousd for r in rows)
    assert Decimal(report["totals"]["routing_saved_usd"]) == Decimal(saved) / 10**9 > 0


async def test_route_respects_residency_and_budgets_price_the_strong_model(db_path: Path) -> None:
    _, eu = make_key(db_path, name="eu", team="t", policy={"jurisdictions": ["EU"]})
    budget = {"name": "b", "scope": {"kind": "global"}, "usd": "0.03"}
    async with gateway(settings(db_path, budgets=[budget])) as gw:
        gw.services.route_policy.loader = lambda spec: WordScorer()
        hard = await gw.http.post(CHAT, json=ask("prove it"), headers=bearer(eu))
        assert hard.status_code == 200 and hard.json()["model"] == "cheap"  # strong is in the US
        # worst case is the strong model: 4 × $0.01 = $0.04 > $0.03, even for an easy prompt
        _, free = make_key(db_path, name="free", team="t")
        refused = await gw.http.post(CHAT, json=ask("easy"), headers=bearer(free))
        assert refused.status_code == 429


def test_route_config_is_validated() -> None:
    base: dict[str, Any] = {
        "backends": {"b": {"kind": "fake"}},
        "models": {"m1": {"backend": "b"}, "m2": {"backend": "b"}},
    }
    with pytest.raises(ConfigError, match="exactly one"):
        parse_settings({**base, "routes": {"auto": {"ladder": ["m1", "m2"]}}})
    with pytest.raises(ConfigError, match="unknown models"):
        parse_settings({**base, "routes": {"auto": {"ladder": ["m1", "nope"], "threshold": 0.5}}})
    with pytest.raises(ConfigError, match="name of a model"):
        parse_settings({**base, "routes": {"m1": {"ladder": ["m1", "m2"], "threshold": 0.5}}})


async def test_the_shipped_learned_router_drives_the_route(db_path: Path) -> None:
    """No scripted scorer: the artifact in margin/routing/data scores real prompts."""
    async with gateway(settings(db_path)) as gw:
        prompts = [
            "What is 2 + 2?",
            "Janet has 3 apples and buys 5 boxes of 12 apples each; she gives away a third of them and then "
            "sells the rest at $0.35 each. How much money does she make? Show each step of the calculation.",
        ]
        for prompt in prompts:
            assert (await gw.http.post(CHAT, json=ask(prompt))).status_code == 200
        rows = await gw.rows()
        scores = [r.router_score for r in rows]
        assert all(0.0 <= s <= 1.0 for s in scores) and scores[0] != scores[1]
        threshold = gw.services.route_policy.threshold(gw.services.settings.routes["auto"])
        assert [r.model for r in rows] == ["cheap" if s >= threshold else "strong" for s in scores]
