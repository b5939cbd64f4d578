"""The exact cache through the gateway: hits replayed as JSON and SSE, recorded with their saving, scoped
per team, and never carrying one caller's redacted data into another's answer."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from margin.economics.money import to_nanousd
from tests.governance.conftest import bearer, make_key
from tests.helpers import fake_settings, gateway

CHAT = "/v1/chat/completions"
PRICE = {"input": "0", "output": "1000", "version": "t"}  # $0.001 per output token


def settings(db_path: Path, **overrides: Any) -> Any:
    backends = {"echo": {"kind": "fake", "echo": True, "output_tokens": 20}}
    return fake_settings(db_path, backends=backends, models={"m": {"backend": "echo", "price": PRICE}}, **overrides)


def chat(content: str = "what is the capital of france", **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 20,
        **extra,
    }


async def test_hit_replays_answer_costs_nothing_and_records_saving(db_path: Path) -> None:
    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "1"}
    async with gateway(settings(db_path, budgets=[budget])) as gw:
        miss = await gw.http.post(CHAT, json=chat())
        hit = await gw.http.post(CHAT, json=chat())
        assert miss.headers["x-margin-cache"] == "miss" and hit.headers["x-margin-cache"] == "hit-exact"
        first, second = miss.json(), hit.json()
        assert second["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
        assert second["usage"] == first["usage"] and second["id"] != first["id"]
        assert hit.headers["x-margin-cost-usd"] == "0.000000000"
        rows = await gw.rows()
        assert [r.kind for r in rows] == ["request", "cache_hit"]
        assert rows[1].cost_nanousd == 0 and rows[1].saved_nanousd == rows[0].cost_nanousd == to_nanousd(
            Decimal("0.006")
        )
        assert rows[1].cache == "exact" and rows[1].output_tokens == rows[0].output_tokens
        assert gw.services.backends["echo"].calls == 1  # type: ignore[attr-defined]
        assert await gw.services.governance.store.pending() == 0  # the hit's reservation was released


async def test_stream_hit_and_opt_out(db_path: Path) -> None:
    async with gateway(settings(db_path)) as gw:
        await gw.http.post(CHAT, json=chat())
        text = ""
        async with gw.http.stream("POST", CHAT, json=chat(stream=True)) as stream:
            assert stream.headers["x-margin-cache"] == "hit-exact"
            async for line in stream.aiter_lines():
                if line.startswith("data: {"):
                    for choice in orjson.loads(line[6:])["choices"]:
                        text += choice["delta"].get("content") or ""
        assert text.strip() == "what is the capital of france"
        off = await gw.http.post(CHAT, json=chat(), headers={"x-margin-cache": "off"})
        assert "x-margin-cache" not in off.headers
        random_temp = await gw.http.post(CHAT, json=chat(temperature=0.7))
        assert "x-margin-cache" not in random_temp.headers  # not deterministic: not cached by default
        bad = await gw.http.post(CHAT, json=chat(), headers={"x-margin-cache": "maybe"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-margin-cache"
        assert gw.services.backends["echo"].calls == 3  # type: ignore[attr-defined]


async def test_entries_are_scoped_per_team(db_path: Path) -> None:
    _, search = make_key(db_path, name="s", team="search")
    _, ads = make_key(db_path, name="a", team="ads")
    _, search2 = make_key(db_path, name="s2", team="search")
    async with gateway(settings(db_path)) as gw:
        await gw.http.post(CHAT, json=chat(), headers=bearer(search))
        other_team = await gw.http.post(CHAT, json=chat(), headers=bearer(ads))
        same_team = await gw.http.post(CHAT, json=chat(), headers=bearer(search2))
        assert other_team.headers["x-margin-cache"] == "miss"
        assert same_team.headers["x-margin-cache"] == "hit-exact"


async def test_redacted_requests_never_leak_through_the_cache(db_path: Path) -> None:
    policies = {"default": {"pii": "redact", "restore_pii": True}}
    async with gateway(settings(db_path, policies=policies)) as gw:
        first = await gw.http.post(CHAT, json=chat("mail alice@example.org now"))
        second = await gw.http.post(CHAT, json=chat("mail bob@example.org now"))
        assert second.headers["x-margin-cache"] == "hit-exact"  # same redacted request
        assert "alice@example.org" in first.json()["choices"][0]["message"]["content"]
        answer = second.json()["choices"][0]["message"]["content"]
        assert "bob@example.org" in answer and "alice" not in answer


async def test_report_shows_cache_savings(db_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from margin.cli import app

    async with gateway(settings(db_path, tags={"header_keys": ["feature"]})) as gw:
        for _ in range(3):
            await gw.http.post(CHAT, json=chat(), headers={"x-margin-tags": "feature=faq"})
        rows = await gw.rows()
    result = CliRunner().invoke(app, ["report", "--db", str(db_path), "--by", "feature", "--json"])
    faq = json.loads(result.output)["groups"][0]
    assert faq["key"] == "faq" and faq["requests"] == 3 and faq["cache_hits"] == 2
    assert Decimal(faq["cache_saved_usd"]) == 2 * Decimal(rows[0].cost_nanousd) / 10**9
    assert Decimal(faq["cost_usd"]) == Decimal(rows[0].cost_nanousd) / 10**9
    table = CliRunner().invoke(app, ["report", "--db", str(db_path), "--by", "feature"])
    assert "cache $0.0120 (2 hits)" in table.output


async def test_entries_outlive_a_restart_on_a_single_node(db_path: Path) -> None:
    async with gateway(settings(db_path)) as gw:
        assert (await gw.http.post(CHAT, json=chat())).headers["x-margin-cache"] == "miss"
    async with gateway(settings(db_path)) as gw:  # a new process: the memory tier is empty, SQLite is not
        again = await gw.http.post(CHAT, json=chat())
        assert again.headers["x-margin-cache"] == "hit-exact"
        assert gw.services.backends["echo"].calls == 0  # type: ignore[attr-defined]
    async with gateway(settings(db_path, cache={"ttl_s": 0.001})) as gw:
        await gw.http.post(CHAT, json=chat(content="short-lived"))
        await asyncio.sleep(0.01)
        assert (await gw.http.post(CHAT, json=chat(content="short-lived"))).headers["x-margin-cache"] == "miss"


class WordsEncoder:
    """A stand-in for MiniLM: bag of lower-cased words hashed into 384 dims, L2-normalized."""

    def __call__(self, texts: list[str]) -> Any:
        import re
        import zlib

        import numpy as np

        out = np.zeros((len(texts), 384), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                out[row, zlib.crc32(word.encode()) % 384] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


async def test_semantic_hits_are_scoped_and_recorded(db_path: Path) -> None:
    config = settings(db_path, cache={"semantic": {"enabled": True, "delta": 0.01}})
    async with gateway(config) as gw:
        assert gw.services.semantic is not None
        gw.services.semantic.cache.encoder = WordsEncoder()
        first = await gw.http.post(CHAT, json=chat("What is the capital of France?"))
        again = await gw.http.post(CHAT, json=chat("what is the capital of france"))  # same words: cosine 1
        other = await gw.http.post(CHAT, json=chat("what is the capital of spain"))
        system = {"role": "system", "content": "answer in German"}
        with_system = chat("what is the capital of france")
        with_system["messages"] = [system, *with_system["messages"]]
        different_context = await gw.http.post(CHAT, json=with_system)
        assert first.headers["x-margin-cache"] == "miss"
        assert again.headers["x-margin-cache"] == "hit-semantic"
        assert "x-margin-cache-similarity" not in again.headers  # only admin keys see how close a probe came
        assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
        assert other.headers["x-margin-cache"] == "miss" and different_context.headers["x-margin-cache"] == "miss"
        rows = await gw.rows()
        assert [(r.kind, r.cache) for r in rows] == [
            ("request", None),
            ("cache_hit", "semantic"),
            ("request", None),
            ("request", None),
        ]
        assert rows[1].saved_nanousd == rows[0].cost_nanousd


async def test_hits_count_no_tokens_against_token_budgets(db_path: Path) -> None:
    budget = {"name": "tok", "scope": {"kind": "global"}, "tokens": 1000}
    async with gateway(settings(db_path, budgets=[budget])) as gw:
        for _ in range(3):
            await gw.http.post(CHAT, json=chat())
        rows = await gw.rows()
        from datetime import UTC, datetime

        from margin.governance.admission import counter_name, window

        name = counter_name(gw.services.governance.rules.budgets[0], window("month", datetime.now(UTC))[0])
        spent, reserved = (await gw.services.governance.store.counters([name]))[name]
        assert [r.kind for r in rows] == ["request", "cache_hit", "cache_hit"]
        assert (spent, reserved) == (rows[0].input_tokens + rows[0].output_tokens, 0)
