"""Anthropic's Messages API on the real local model (`margin serve` with its default config: SmolLM2 on
llama.cpp), called with the official anthropic SDK: a whole answer and the SDK's stream helper, each with the
usage its ledger row holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.helpers import margin_serve, wait_ledger_row

pytestmark = pytest.mark.integration


def _usage_matches(usage: Any, row: Any) -> None:
    """Anthropic's `input_tokens` leaves out the input read from the prompt cache; the row counts all input."""
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == row.input_tokens
    assert (usage.cache_read_input_tokens, usage.output_tokens) == (row.cached_tokens, row.output_tokens)


def test_messages_on_the_local_model(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with (
        margin_serve(db, tmp_path / "serve.log") as (url, _),
        anthropic.Anthropic(api_key="local", base_url=url, max_retries=0, timeout=120) as client,
    ):
        raw = client.messages.with_raw_response.create(
            model="local",
            max_tokens=12,
            system="Answer briefly.",
            messages=[{"role": "user", "content": "Name a colour."}],
            extra_body={"temperature": 0},
        )
        message = raw.parse()
        assert message.content and message.content[0].type == "text" and message.content[0].text
        assert message.stop_reason in ("end_turn", "max_tokens") and 0 < message.usage.output_tokens <= 12
        row = wait_ledger_row(db, url, raw.headers["x-request-id"])
        assert row.endpoint == "messages"
        _usage_matches(message.usage, row)

        with client.messages.stream(
            model="local", max_tokens=8, messages=[{"role": "user", "content": "Say hello."}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert final.content[0].type == "text" and text == final.content[0].text
        assert final.stop_reason in ("end_turn", "max_tokens")  # 8 tokens may end the answer early
        row = wait_ledger_row(db, url, final.id.removeprefix("msg_"))
        assert (row.endpoint, row.stream) == ("messages", True)
        _usage_matches(final.usage, row)  # llama.cpp reuses the template's prefix: cache reads are not input
