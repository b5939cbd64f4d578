"""Every string in a content part leaves for the upstream, so the guard reads them all: a vendor key sent on with a
part (`{"type": "text", "text": "hi", "note": "<e-mail>"}`, as `cache_control` is sent for OpenRouter) and a file
part's `filename`. Before, only a part's `text` and `refusal` were read: under `pii: block` the e-mail in another
key of the part went upstream (200), and `pii: redact` sent it as it came. An image's url and a file's data stay
unread (structure). One `margin serve`, a recording upstream, the official SDK, a key per policy."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from margin import keys
from margin.ledger import db as ledger_db
from tests.helpers import recorded_gateway
from tests.servers import reply_json

EMAIL = "alice.jones@example.com"
PARTS: dict[str, dict[str, Any]] = {
    "vendor key": {"type": "text", "text": "summarise the thread", "note": f"from {EMAIL}"},
    "a refusal part": {"type": "refusal", "refusal": f"I cannot mail {EMAIL}"},
    "filename": {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": f"{EMAIL}.pdf"},
    },
}


def _answer(handler: Any, body: dict[str, Any]) -> None:
    message = {"role": "assistant", "content": "ok"}
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    head = {"id": "up", "object": "chat.completion", "created": 0, "model": "m"}
    reply_json(
        handler, 200, {**head, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, openai.OpenAI], list[Any]]]:
    folder: Path = tmp_path_factory.mktemp("parts")
    url = f"sqlite:///{folder / 'ledger.db'}"
    ledger_db.upgrade(url)
    engine = ledger_db.make_sync_engine(url)
    secrets = {
        level: keys.create_key(engine, keys.NewKey(level, "t", {}, None, False, {"pii": level}))[1]
        for level in ("block", "redact")
    }
    engine.dispose()
    with recorded_gateway(folder, _answer) as (base_url, bodies):
        clients = {
            level: openai.OpenAI(base_url=base_url + "/v1", api_key=secret, max_retries=0, timeout=30)
            for level, secret in secrets.items()
        }
        yield clients, bodies
        for client in clients.values():
            client.close()


@pytest.mark.parametrize("where", list(PARTS))
def test_a_value_in_any_key_of_a_part_is_blocked_or_redacted(
    gateway: tuple[dict[str, openai.OpenAI], list[Any]], where: str
) -> None:
    clients, bodies = gateway
    messages: Any = [{"role": "user", "content": [PARTS[where]]}]
    with pytest.raises(openai.BadRequestError) as refused:  # before: 200, the e-mail sent upstream
        clients["block"].chat.completions.create(model="m", messages=messages)
    assert refused.value.code == "pii_detected" and EMAIL not in str(refused.value)
    assert EMAIL not in str(bodies)
    clients["redact"].chat.completions.create(model="m", messages=messages)
    sent = bodies[-1]["messages"][0]["content"][0]
    assert EMAIL not in str(bodies) and "<EMAIL_1>" in str(sent)  # before: sent as it came
    assert sent["type"] == PARTS[where]["type"]


MEDIA: dict[str, dict[str, Any]] = {  # the value under a part's own type is the medium, as other vendors send it
    "image_url as a string (Mistral)": {"type": "image_url", "image_url": f"https://cdn.example/{EMAIL}/cat.png"},
    "document_url (Mistral)": {"type": "document_url", "document_url": f"https://docs.example/{EMAIL}.pdf"},
    "image_embeds (vLLM)": {"type": "image_embeds", "image_embeds": base64.b64encode(os.urandom(3 * 2**10)).decode()},
}


@pytest.mark.parametrize("what", list(MEDIA))
def test_a_medium_under_its_part_s_type_goes_as_it_came(
    gateway: tuple[dict[str, openai.OpenAI], list[Any]], what: str
) -> None:
    """Every other string of a part is read (above), but not the medium a part of another type carries under its
    own type: an image's address that names an e-mail was refused under `block` and rewritten under `redact`, and
    an embedding's base64 could read as a secret."""
    clients, bodies = gateway
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, MEDIA[what]]}]
    for level in ("block", "redact"):
        clients[level].chat.completions.create(model="m", messages=messages)  # before: 400 pii_detected / rewritten
        assert bodies[-1]["messages"][0]["content"][1] == MEDIA[what]
