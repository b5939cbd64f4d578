"""Requests of one model at the standard, flex and priority tiers through a running `margin serve` (an
OpenAI-like upstream over real HTTP that says which tier served each): `margin export focus` writes a FOCUS row
per tier with that tier's cost and request count, and `/v1/margin/usage?by=service_tier` groups by it. Before,
the export had one row for the model's day, at a blended price, and the grouping was refused."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.api.test_service_tier import NANO, USER, Upstream, _answer, _tiered
from tests.governance.conftest import bearer, make_key
from tests.helpers import margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler

ASKED = [None, "flex", "flex", "priority", "priority", "priority"]  # None: the upstream says `default`
EXPECTED = {"default": (1, NANO["default"]), "flex": (2, 2 * NANO["flex"]), "priority": (3, 3 * NANO["priority"])}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[datetime]]]:
    """The gateway's folder (margin.yaml, ledger.db) after the ASKED requests, and their rows' times."""
    folder = tmp_path_factory.mktemp("focus-tiers")
    upstream = Upstream()
    with http_thread(recording_handler(upstream.bodies, _answer)) as base:
        backend = {"kind": "openai", "base_url": f"{base}/v1", "provider": "openai", "timeout_s": 10,
                   "retries": {"attempts": 0}, "service_tiers": ["flex", "priority"]}  # fmt: skip
        config = {"storage": {"flush_interval_ms": 10}, "backends": {"tiers": backend},
                  "models": {"mini": _tiered("gpt-5-mini")}}  # fmt: skip
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        _, key = make_key(folder / "ledger.db", name="finops", team="search")
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process):
            times = []
            for tier in ASKED:
                body = {"model": "mini", "messages": USER} | ({"service_tier": tier} if tier else {})
                answer = httpx.post(url + "/v1/chat/completions", json=body, headers=bearer(key))
                assert answer.status_code == 200, answer.text
                times.append(wait_ledger_row(folder / "ledger.db", url, answer.headers["x-margin-request-id"]))
            usage = httpx.get(url + "/v1/margin/usage", params={"by": "service_tier"}, headers=bearer(key))
            (folder / "usage.json").write_text(json.dumps({"status": usage.status_code, "body": usage.json()}))
    yield folder, [datetime.fromisoformat(str(row.created_at)) for row in times]


def test_the_focus_export_has_a_row_per_tier(served: tuple[Path, list[datetime]], tmp_path: Path) -> None:
    folder, times = served
    found: dict[str, tuple[int, int]] = {}
    for period in sorted({t.strftime("%Y-%m") for t in times}):  # the rows' month (two, across a month's end)
        out = tmp_path / f"focus-{period}.csv"
        command = [sys.executable, "-m", "margin", "export", "focus", "--config", str(folder / "margin.yaml"),
                   "--db", str(folder / "ledger.db"), "--period", period, "--out", str(out)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        with out.open(newline="") as handle:
            for row in csv.DictReader(handle):
                assert row["x_ModelName"] == "mini" and row["ProviderName"] == "openai"
                assert row["ChargeDescription"].endswith(f"at {row['x_ServiceTier']} via tiers")
                requests, cost = found.get(row["x_ServiceTier"], (0, 0))
                nano = int(row["BilledCost"].replace(".", ""))
                found[row["x_ServiceTier"]] = (requests + int(row["x_Requests"]), cost + nano)
    assert found == EXPECTED


def test_usage_groups_by_service_tier_over_http(served: tuple[Path, list[datetime]]) -> None:
    folder, _ = served
    answer = json.loads((folder / "usage.json").read_text())
    assert answer["status"] == 200, answer
    usage = answer["body"]
    groups = {g["key"]: (g["requests"], g["cost_usd"]) for g in usage["groups"]}
    assert groups == {tier: (n, f"0.{cost:09d}") for tier, (n, cost) in EXPECTED.items()}
