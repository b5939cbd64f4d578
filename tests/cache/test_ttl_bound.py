"""`cache.ttl_s` is finite and at most 2^31 - 1 seconds. Before, any positive float was taken: `ttl_s: .inf`
with the entries in Redis made storing each answer raise (`int(inf)` for Redis' EX): every cacheable request was a
500 after its upstream call was paid, and its key's lease was never released, so an identical request waited the
whole `coalesce_wait_s` (60 s) before failing the same way; `1e300` was refused by Redis on each write, so nothing
was ever stored. Both are refused by the config now, as other bounds are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from margin.cli import app
from margin.config import parse_settings
from margin.errors import ConfigError

runner = CliRunner()
MAX_CACHE_TTL_S = 2**31 - 1  # about 68 years: a 5-year "keep for ever" starts (a first cap of 366 days refused it)


@pytest.mark.parametrize("ttl", [".inf", "1e300", str(MAX_CACHE_TTL_S + 1), "0"])
def test_margin_config_check_refuses_a_ttl_a_store_cannot_keep(tmp_path: Path, ttl: str) -> None:
    path = tmp_path / "margin.yaml"
    path.write_text(f"cache:\n  ttl_s: {ttl}\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code != 0 and "cache.ttl_s" in " ".join(result.output.split())  # before: accepted (bar 0)


def test_the_largest_ttl_is_one_redis_takes() -> None:
    data: dict[str, Any] = yaml.safe_load(f"cache: {{ttl_s: {MAX_CACHE_TTL_S}}}")
    assert parse_settings(data).cache.ttl_s == MAX_CACHE_TTL_S
    with pytest.raises(ConfigError, match=r"cache\.ttl_s"):
        parse_settings({"cache": {"ttl_s": float("nan")}})


async def test_redis_keeps_an_entry_for_the_largest_ttl(redis_url: str) -> None:
    """The largest `ttl_s` the config takes is one the Redis store can write (EX a whole number of seconds)."""
    from margin.cache.exact import Entry, RedisCache

    cache = RedisCache(redis_url)
    kept = Entry("hi", "stop", 1, 1, 2, "m", 0.0)
    try:
        await cache.put("ttl-bound", kept, MAX_CACHE_TTL_S)
        assert await cache.get("ttl-bound") == kept
    finally:
        await cache.close()
