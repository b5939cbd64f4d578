"""The Responses API on the real local model (`margin serve` with its default config: SmolLM2 on llama.cpp),
called with the official openai SDK: a JSON answer and a stream, each with the usage its ledger row holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import margin_serve, wait_ledger_row

pytestmark = pytest.mark.integration


def test_responses_on_the_local_model(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with (
        margin_serve(db, tmp_path / "serve.log") as (url, _),
        openai.OpenAI(api_key="local", base_url=f"{url}/v1", max_retries=0, timeout=120) as client,
    ):
        raw = client.responses.with_raw_response.create(
            model="local", instructions="Answer briefly.", input="Name a colour.", max_output_tokens=12, temperature=0
        )
        response = raw.parse()
        assert response.output_text and response.usage is not None
        assert 0 < response.usage.output_tokens <= 12
        row = wait_ledger_row(db, url, raw.headers["x-request-id"])
        assert row.endpoint == "responses"
        assert (row.input_tokens, row.output_tokens) == (response.usage.input_tokens, response.usage.output_tokens)

        events: list[Any] = list(
            client.responses.create(model="local", input="Say hello.", max_output_tokens=8, stream=True)
        )
        deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
        last = events[-1]  # 8 tokens may end the answer early: `response.incomplete` then
        assert last.type in ("response.completed", "response.incomplete")
        final = last.response
        assert final.usage is not None and "".join(deltas) == final.output_text
        row = wait_ledger_row(db, url, final.id.removeprefix("resp_"))
        assert (row.endpoint, row.stream) == ("responses", True)
        assert (row.input_tokens, row.output_tokens) == (final.usage.input_tokens, final.usage.output_tokens)
