"""`margin batches list|show|plan|cancel` on a ledger a gateway wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from margin.cli import app
from tests.batches.helpers import batch_settings, jsonl, line, sdk, wait_final
from tests.helpers import gateway

runner = CliRunner()


def _cli(config: Path, db: Path, *args: str) -> Any:
    result = runner.invoke(app, ["batches", *args, "--config", str(config), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return result.output


async def test_list_show_plan_and_cancel(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    settings = batch_settings(db, objective="carbon")
    config = tmp_path / "margin.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    async with gateway(settings) as gw:
        client = sdk(gw)
        upload = await client.files.create(file=("in.jsonl", jsonl(line("a"), line("b"))), purpose="batch")
        done = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await wait_final(client, done.id)
        gw.app.state.batch_runner._stopping = True  # keep the next job waiting for the CLI to cancel it
        waiting = await client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    listed = json.loads(_cli(config, db, "list", "--json"))
    assert [(b["id"], b["status"]) for b in listed] == [(waiting.id, "validating"), (done.id, "completed")]
    shown = json.loads(_cli(config, db, "show", done.id, "--json"))
    assert shown["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert shown["ledger"]["ledger_rows"] == 2 and float(shown["ledger"]["discount_usd"]) > 0
    assert shown["margin"]["lines"] == {"done": 2}
    planned = json.loads(_cli(config, db, "plan", done.id, "--json"))
    assert planned["objective"] == "carbon" and planned["windows"][0]["model"] == "fake-chat"
    assert "saving versus now" in _cli(config, db, "plan", done.id)
    assert "fake-chat" in _cli(config, db, "list")
    assert "cancelled" in _cli(config, db, "cancel", waiting.id) or "cancelling" in _cli(config, db, "show", waiting.id)
    again = runner.invoke(app, ["batches", "cancel", done.id, "--config", str(config), "--db", str(db)])
    assert again.exit_code == 2  # a completed job cannot be cancelled
    missing = runner.invoke(app, ["batches", "show", "batch_nope", "--config", str(config), "--db", str(db)])
    assert missing.exit_code == 2
