"""A small real batch on the local model: `margin serve` (default config: SmolLM2 on llama.cpp, MiniLM
embeddings), the official openai SDK's Batch API, and the ledger rows of each line."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa

from margin.ledger import db as ledger_db
from tests.batches.helpers import entries, jsonl, line
from tests.helpers import margin_serve

pytestmark = pytest.mark.integration


def _finish(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    deadline = time.monotonic() + 300
    while (batch := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.2)
    return batch


def test_a_small_batch_on_the_local_model(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with margin_serve(db, tmp_path / "serve.log") as (url, _):
        client = openai.OpenAI(api_key="local", base_url=f"{url}/v1", max_retries=0, timeout=120)
        questions = ["What is the capital of France?", "Name a colour.", "Say hello."]
        chat = jsonl(*(line(f"q{i}", q, model="local", max_tokens=12, temperature=0) for i, q in enumerate(questions)))
        upload = client.files.create(file=("chat.jsonl", chat), purpose="batch")
        batch = _finish(
            client,
            client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h").id,
        )
        vectors = jsonl(
            *(
                {
                    "custom_id": f"e{i}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-local", "input": text},
                }
                for i, text in enumerate(["a cat", "a kitten"])
            )
        )
        embedded = _finish(
            client,
            client.batches.create(
                input_file_id=client.files.create(file=("emb.jsonl", vectors), purpose="batch").id,
                endpoint="/v1/embeddings",
                completion_window="24h",
            ).id,
        )
        assert batch.status == "completed" and batch.output_file_id is not None
        output = entries(client.files.content(batch.output_file_id).content)
        assert embedded.status == "completed" and embedded.output_file_id is not None
        vector_lines = entries(client.files.content(embedded.output_file_id).content)
    assert [e["custom_id"] for e in output] == ["q0", "q1", "q2"]
    for entry in output:
        body = entry["response"]["body"]
        assert entry["response"]["status_code"] == 200 and body["choices"][0]["message"]["content"].strip()
        assert 0 < body["usage"]["completion_tokens"] <= 12
    assert all(len(e["response"]["body"]["data"][0]["embedding"]) == 384 for e in vector_lines)
    engine = ledger_db.make_sync_engine(f"sqlite:///{db}")
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT request_id, batch_id, model, output_tokens, cost_nanousd, discount_nanousd, co2e_g "
                "FROM ledger WHERE batch_id IS NOT NULL"
            )
        ).all()
    engine.dispose()
    assert len(rows) == 5 and {r.batch_id for r in rows} == {batch.id, embedded.id}
    chat_rows = {r.request_id: r for r in rows if r.batch_id == batch.id}
    for entry in output:
        row = chat_rows[entry["response"]["request_id"]]
        assert row.model == "smollm2-135m-instruct"
        assert row.output_tokens == entry["response"]["body"]["usage"]["completion_tokens"]
        assert row.cost_nanousd > 0 and abs(row.discount_nanousd - row.cost_nanousd) <= 1  # 50 % off
        assert row.co2e_g > 0
