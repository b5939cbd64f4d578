"""What the governance pass's look for key changes costs (margin.keywatch: `audit.key_changes`), on a SQLite
ledger holding `--keys` API keys, each created with its audit row (as `margin keys create` and `POST
/admin/keys` leave them), against the signal it was preferred to: the newest revocation or rotation in
`api_keys` (a scan of every key: no index on those columns).

    python benchmarks/key_changes.py [--keys 100000] [--passes 2000]

Timed through the gateway's own async engine (aiosqlite), one connection per pass as the pass takes it: a pass
where nothing changed, a pass after one revocation (the rows since are read), the scan, and `SELECT 1` (what
a connection and a statement cost with nothing read). Writes
benchmarks/results/key_changes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from margin import keys
from margin.keys import hash_key
from margin.ledger import audit, db
from margin.ledger.models import api_keys, audit_log

RESULTS = Path(__file__).resolve().parent / "results"


def load(url: str, n: int) -> None:
    """`n` keys and their `key.create` rows, in bulk (the audit rows' hashes are not chained: not read here)."""
    engine = db.make_sync_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            api_keys.insert(),
            [{"id": f"{i:08x}", "name": f"k{i}", "tags": {}, "key_hash": hash_key(f"k{i}"), "created_at": now}
             for i in range(n)],
        )  # fmt: skip
        row = {"at": now, "actor": "cli:bench", "source": "cli", "action": "key.create", "outcome": "ok", "hash": ""}
        connection.execute(audit_log.insert(), [{**row, "target": f"{i:08x}"} for i in range(n)])
    engine.dispose()


async def per_pass(engine: Any, passes: int, after: int) -> float:
    """Mean seconds of one `key_changes` pass after `after`."""
    start = time.perf_counter()
    for _ in range(passes):
        async with engine.connect() as connection:
            await connection.run_sync(audit.key_changes, after)
    return (time.perf_counter() - start) / passes


async def scan(engine: Any, passes: int, query: Any) -> float:
    start = time.perf_counter()
    for _ in range(passes):
        async with engine.connect() as connection:
            (await connection.execute(query)).one()
    return (time.perf_counter() - start) / passes


async def measure(url: str, n: int, passes: int) -> dict[str, Any]:
    engine = db.make_async_engine(url)
    try:
        async with engine.connect() as connection:
            last, _ = await connection.run_sync(audit.key_changes, 0)
        quiet = await per_pass(engine, passes, last)
        sync = db.make_sync_engine(url)
        keys.revoke_key(sync, f"{n - 1:08x}", audit.Origin("cli:bench", "cli"))
        sync.dispose()
        changed = await per_pass(engine, passes, last)
        newest = sa.select(sa.func.max(api_keys.c.revoked_at), sa.func.max(api_keys.c.rotated_at))
        scanned = await scan(engine, max(passes // 20, 10), newest)
        floor = await scan(engine, passes, sa.select(sa.literal(1)))  # a connection and a statement, nothing read
    finally:
        await engine.dispose()
    return {"keys": n, "audit_rows": n + 1, "quiet_pass_ms": quiet * 1e3, "changed_pass_ms": changed * 1e3,
            "api_keys_scan_ms": scanned * 1e3, "select_1_ms": floor * 1e3}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--passes", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{Path(workdir) / 'ledger.db'}"
        db.upgrade(url)
        load(url, args.keys)
        result = asyncio.run(measure(url, args.keys, args.passes))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "key_changes.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
