"""One `margin serve` under `injection: block` with a recording upstream, and a text sent to it as a chat message,
a Responses input item and a Messages content block: the guard's HTTP tests on obfuscated attacks share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from tests.helpers import margin_serve
from tests.servers import http_thread, recording_handler, reply_json

REFUSED = ["prompt_injection_detected", "prompt_injection_detected", "invalid_request_error"]


def _answer(handler: Any, body: dict[str, Any]) -> None:
    message = {"role": "assistant", "content": "ok"}
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    head = {"id": "up", "object": "chat.completion", "created": 0, "model": "m"}
    reply_json(handler, 200, {**head, "choices": [choice], "usage": usage})


@contextmanager
def blocking_gateway(folder: Path) -> Iterator[tuple[str, list[Any]]]:
    """Yields (the gateway's base URL, the bodies its upstream received)."""
    bodies: list[Any] = []
    with http_thread(recording_handler(bodies, _answer)) as base:
        config = {
            "storage": {"flush_interval_ms": 10},
            "policies": {"default": {"injection": "block"}},
            "backends": {"up": {"kind": "openai", "base_url": f"{base}/v1", "retries": {"attempts": 0}}},
            "models": {"m": {"backend": "up", "price": {"input": "1", "output": "1"}}},
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        with margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml") as (url, _):
            yield url, bodies


def send_everywhere(url: str, text: str) -> tuple[list[Any], str]:
    """`text` through chat, Responses and Messages: each one's error code (`REFUSED` when the guard blocked all
    three) or 200, and the Messages answer's error message ("" when it was answered)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
    codes: list[Any] = []
    try:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
        codes.append(200)
    except openai.BadRequestError as refused:
        codes.append(refused.code)
    try:
        item: Any = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        client.responses.create(model="m", input=[item])
        codes.append(200)
    except openai.BadRequestError as refused:
        codes.append(refused.code)
    client.close()
    block = {"type": "text", "text": text}
    messages = httpx.post(
        url + "/v1/messages",
        json={"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": [block]}]},
        timeout=30,
    )
    error = messages.json()["error"] if messages.status_code == 400 else {"type": messages.status_code, "message": ""}
    codes.append(error["type"])
    return codes, str(error["message"])
