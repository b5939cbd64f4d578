"""A PDF under a hard budget: Anthropic bills it by the page (~1.5-3K tokens each), so a ~10 KB file of 100 pages
that share one content stream is billed ~150K tokens. Before, the reservation bounded its request by its JSON's
bytes plus 8,192 tokens a part (~22K) and held the row there: the ledger said less than the upstream billed and
a hard budget overspent. Now a file part's request is bounded by its candidates' `context_length` (the row holds
what was billed), and refused (403 `context_length_unknown`) before it is sent where a candidate has none.
`margin serve` over real HTTP, a fake Anthropic Messages API on a thread
(tests/backends/anthropic_upstream.py), the official openai SDK as the client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from margin.ledger.models import ledger
from tests.backends.anthropic_upstream import PAGED, anthropic_upstream
from tests.helpers import ledger_columns, margin_serve

KEY_ENV = "MARGIN_TEST_ANTHROPIC_KEY"
BUDGET = {"name": "all", "scope": {"kind": "global"}, "usd": "100", "period": "day", "mode": "hard"}
PDF = "data:application/pdf;base64," + "JVBERi0x" * 1_250  # ~10 KB
COLUMNS = (ledger.c.model, ledger.c.input_tokens, ledger.c.usage_source, ledger.c.http_status)


def test_a_pdf_s_row_holds_what_was_billed_or_it_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-test-not-a-real-key")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    part: Any = {"type": "file", "file": {"filename": "r.pdf", "file_data": PDF}}
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "sum up"}, part]}]
    with anthropic_upstream() as upstream:
        backend = {"kind": "anthropic", "base_url": upstream.url, "api_key_env": KEY_ENV, "retries": {"attempts": 0}}
        price = {"input": "1", "output": "1"}
        models = {
            "window": {"backend": "claude", "upstream_model": "paged", "price": price, "context_length": 200_000},
            "nowindow": {"backend": "claude", "upstream_model": "paged", "price": price},
        }
        config = {
            "storage": {"ledger": url, "flush_interval_ms": 50},
            "backends": {"claude": backend},
            "models": models,
            "budgets": [BUDGET],
        }
        (tmp_path / "margin.yaml").write_text(yaml.safe_dump(config))
        with margin_serve(None, tmp_path / "serve.log", tmp_path / "margin.yaml") as (base, _):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
            answer = client.chat.completions.create(model="window", messages=messages, max_tokens=16)
            assert answer.usage is not None and answer.usage.prompt_tokens == PAGED["input_tokens"]
            sent = len(upstream.bodies)
            with pytest.raises(openai.PermissionDeniedError) as refused:
                client.chat.completions.create(model="nowindow", messages=messages, max_tokens=16)
            assert refused.value.code == "context_length_unknown"
            assert len(upstream.bodies) == sent  # refused before it was sent: nothing billed
    rows = {row[0]: row[1:] for row in ledger_columns(url, *COLUMNS)}
    assert rows["window"] == (PAGED["input_tokens"], "backend", 200)
