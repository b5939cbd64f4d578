"""An exact-cache entry names the model that produced it: the public name, the backend and the name there
(`upstream_model`). The entries in the SQLite ledger file outlive a restart (and in Redis, every replica of a rolling
upgrade), so before, re-pointing `m` from `small` to `large` and restarting replayed `small`'s stored answers for
`m` for `ttl_s` (a hit, $0, `saved_nanousd` at the old model's price). Now that request misses and `large` answers;
a restart that changes nothing still hits (the entries survive, as the README says)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import yaml

from tests.helpers import margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, reply_json

BODY: Any = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "which model are you?"}]}


def _answer(handler: Any, body: dict[str, Any]) -> None:
    message = {"role": "assistant", "content": f"I am {body['model']}"}
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    head = {"id": "up", "object": "chat.completion", "created": 0}
    reply_json(handler, 200, {**head, "choices": [choice], "usage": usage})


def _ask(folder: Path, base: str, upstream_model: str) -> tuple[str | None, str | None, Any]:
    """One run of `margin serve` on the same ledger file with `m` as `upstream_model`: (cache, text, row)."""
    config = {
        "storage": {"flush_interval_ms": 10},
        "backends": {"up": {"kind": "openai", "base_url": f"{base}/v1", "retries": {"attempts": 0}}},
        "models": {"m": {"backend": "up", "upstream_model": upstream_model, "price": {"input": "1", "output": "1"}}},
    }
    (folder / "margin.yaml").write_text(yaml.safe_dump(config))
    db = folder / "ledger.db"
    with margin_serve(db, folder / "serve.log", config=folder / "margin.yaml") as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
        reply = client.chat.completions.with_raw_response.create(**BODY)
        row = wait_ledger_row(db, url, reply.headers["x-request-id"])
        client.close()
    return reply.headers.get("x-margin-cache"), reply.parse().choices[0].message.content, row


def test_a_model_re_pointed_after_a_restart_is_not_answered_from_the_old_ones_entries(tmp_path: Path) -> None:
    bodies: list[Any] = []
    with http_thread(recording_handler(bodies, _answer)) as base:
        first = _ask(tmp_path, base, "small")
        again = _ask(tmp_path, base, "small")  # the same config: the entry survived the restart
        moved = _ask(tmp_path, base, "large")
    assert (first[0], first[1]) == ("miss", "I am small")
    assert (again[0], again[1], again[2].kind) == ("hit-exact", "I am small", "cache_hit")
    assert (moved[0], moved[1], moved[2].kind) == ("miss", "I am large", "request")  # before: a hit, "I am small"
    assert [b["model"] for b in bodies] == ["small", "large"]
