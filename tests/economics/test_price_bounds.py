"""Price and power inputs the config accepted and the request path could not price. A list price of `input: 1e16`
($/M), a hardware `usd_per_hour: 1e20`, `watts_busy: 1e300` or a region's `usd_per_kwh: 1e12` priced a
request past the ledger's range: its settlement raised (`to_nanousd`), the caller got a 500 and the ledger no row.
Each is refused by the config now, with the bounds `margin cost` already had; a rate that looks per-token (below
$0.001 per million) and a `cached_input` above `input` (a hard budget reserves the prompt at it) are warned of."""

from __future__ import annotations

from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from margin.cli import app
from margin.config import parse_settings
from margin.economics.carbon import GridTable
from margin.economics.meter import Meter
from margin.economics.prices import PriceBook
from margin.ledger import db
from margin.ledger.models import ledger
from margin.specs import MAX_USD, MAX_USD_PER_MTOK
from margin.types import MAX_TOKENS, Usage
from tests.helpers import margin_serve, upstream_config
from tests.servers import http_thread, recording_handler, reply_json

runner = CliRunner()
API = {"api": {"kind": "fake"}}
FLEX = {"flex": {"input": "0.5", "output": "1", "cached_input": "0.6"}}
SELF_HOSTED = {"kind": "fake", "hardware": {"usd_per_hour": "3.6", "watts_busy": 100}}


def check(tmp_path: Path, config: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "margin.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["config", "check", str(path)])
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"models": {"m": {"backend": "api", "price": {"input": "1e16", "output": "1"}}}}, "price.input"),
        ({"models": {"m": {"backend": "api", "price": {"input": "1", "output": "1e400"}}}}, "price.output"),
        ({"backends": {"gpu": {**SELF_HOSTED, "hardware": {"usd_per_hour": "1e20"}}}}, "usd_per_hour"),
        ({"backends": {"gpu": {**SELF_HOSTED, "hardware": {"usd_per_hour": 1, "watts_busy": 1e300}}}}, "watts_busy"),
        (
            {"backends": {"gpu": {**SELF_HOSTED, "hardware": {"usd_per_hour": 1, "energy_overhead": "1e30"}}}},
            "energy_overhead",
        ),
        ({"regions": {"r": {"usd_per_kwh": "1e12"}}}, "usd_per_kwh"),
    ],
    ids=["input", "output", "hourly", "watts", "overhead", "kwh"],
)
def test_unpriceable_inputs_are_refused(tmp_path: Path, config: dict[str, Any], expected: str) -> None:
    code, output = check(tmp_path, {"backends": API, **config})
    assert code == 2 and expected in output and "Traceback" not in output, output


def test_cache_reads_above_input_load_and_are_warned_of(tmp_path: Path) -> None:
    """A provider may bill cache reads above input (genai-prices has one), so the config loads them (a hard budget
    reserves the prompt at the dearer rate: `tests/governance/test_cached_read_reservation.py`); `config check`
    warns, since it is more often a typo for `cache_write_input`. A first version refused them: a config with a
    real provider's price would not start."""
    price = {"input": "1", "output": "2", "cached_input": "5", "service_tiers": FLEX}
    code, output = check(tmp_path, {"backends": API, "models": {"m": {"backend": "api", "price": price}}})
    assert code == 0 and output.count("warning: model m:") == 2, output
    assert "price.cached_input 5 is above input 1" in output
    assert "price.service_tiers.flex.cached_input 0.6 is above input 0.5" in output
    settings = parse_settings({"backends": API, "models": {"m": {"backend": "api", "price": price}}})
    worst = Meter(settings, GridTable.bundled(), PriceBook()).cost_usd(
        "m", settings.models["m"], Usage(1_000_000, 0, source="estimated"), 0
    )
    assert worst == Decimal(5)  # a million prompt tokens reserved at the read rate, not the input rate's $1


def test_a_per_token_looking_rate_is_warned_of(tmp_path: Path) -> None:
    price = {"input": "0.0000025", "output": "0.00001", "cached_input": "0",
             "service_tiers": {"flex": {"input": "0.00000125", "output": "5"}}}  # fmt: skip
    code, output = check(tmp_path, {"backends": API, "models": {"m": {"backend": "api", "price": price}}})
    assert code == 0 and output.count("warning: model m:") == 3, output
    assert "price.input 0.0000025" in output and "price.service_tiers.flex.input 0.00000125" in output
    assert "cached_input" not in output  # 0 is free, not a unit slip


def _largest_usage(handler: BaseHTTPRequestHandler, body: Any) -> None:
    usage = {"prompt_tokens": 2**62, "completion_tokens": 2**62, "prompt_tokens_details": {"cached_tokens": 2**40}}
    choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"], "choices": [choice]}
    reply_json(handler, 200, {**answer, "usage": usage})


def test_the_dearest_price_and_the_largest_usage_still_settle(tmp_path: Path) -> None:
    """The bound's promise: the dearest allowed rate times the most tokens a row counts (a hostile upstream's
    2^62, held at 2^30 - 1 each way) stays within MAX_USD, so the request is answered and its row written."""
    cost = 2 * MAX_TOKENS * MAX_USD_PER_MTOK / 1_000_000
    assert cost <= MAX_USD
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    price = {"input": str(MAX_USD_PER_MTOK), "output": str(MAX_USD_PER_MTOK), "cached_input": str(MAX_USD_PER_MTOK)}
    with http_thread(recording_handler([], _largest_usage)) as upstream:
        path = upstream_config(tmp_path, url, upstream, {"price": price})
        with margin_serve(None, tmp_path / "serve.log", path) as (base, _):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-margin-cost-usd"] == f"{cost:.9f}"
    engine = db.make_sync_engine(url)
    try:
        with engine.connect() as connection:
            rows = list(connection.execute(sa.select(ledger.c.cost_nanousd, ledger.c.input_tokens)))
    finally:
        engine.dispose()
    assert rows == [(int(cost * 10**9), MAX_TOKENS)]
