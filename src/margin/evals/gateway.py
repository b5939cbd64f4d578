"""The eval kit's side of the gateway: start `margin serve` as a subprocess (as a user would), and read the
ledger rows of the requests it answered (joined by `x-margin-request-id`) for energy, carbon and busy time.
The request path is never imported: the gateway is a separate process reached over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from margin.errors import ConfigError

READY_TIMEOUT_S = 300.0
LEDGER_WAIT_S = 15.0
BATCH = 500
LEDGER_FIELDS: tuple[str, ...] = (
    "request_id",
    "cost_nanousd",
    "cost_status",
    "price_version",
    "energy_j",
    "energy_method",
)
LEDGER_FIELDS += ("co2e_g", "busy_ms", "ttft_ms", "e2e_ms", "input_tokens", "output_tokens", "model", "backend")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(config: Path, ledger_db: Path, log: Path) -> Iterator[str]:
    """`margin serve --config CONFIG --db LEDGER` on a free loopback port; yields its …/v1 URL when ready."""
    if not config.is_file():
        raise ConfigError(f"gateway config {config} does not exist")
    port = _free_port()
    command = [sys.executable, "-m", "margin", "serve", "--config", str(config), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--db", str(ledger_db)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, log)
        yield f"{url}/v1"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"margin serve exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise ConfigError(f"margin serve did not become ready in {READY_TIMEOUT_S:.0f}s; see {log}")


def post_outcomes(base_url: str, headers: dict[str, str], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each graded answer's outcome to the gateway's feedback endpoint (success and score), so `margin report
    --metric cost_per_task` sees the eval too. Batches of 500; a refusal is reported, not raised."""
    outcomes = [
        {"request_id": r["call"]["request_id"], "success": bool(r["grade"]["passed"]), "score": r["grade"]["score"]}
        for r in records
        if r["call"].get("request_id") and r["call"].get("status") == 200
    ]
    posted, url = 0, f"{base_url.rstrip('/')}/margin/feedback"
    for start in range(0, len(outcomes), BATCH):
        try:
            response = httpx.post(url, json=outcomes[start : start + BATCH], headers=headers, timeout=60)
        except httpx.HTTPError as exc:
            return {"posted": posted, "error": f"{type(exc).__name__}: {exc}"[:300]}
        if response.status_code != 200:
            return {"posted": posted, "error": f"{response.status_code}: {response.text[:300]}"}
        posted += len(outcomes[start : start + BATCH])
    return {"posted": posted, "error": None}


def ledger_rows(url: str, request_ids: Sequence[str], wait_s: float = LEDGER_WAIT_S) -> dict[str, dict[str, Any]]:
    """The ledger rows (kind=request) of these requests, waiting up to `wait_s` for the gateway's batched
    writer to flush the last ones. Missing ids are simply absent from the answer."""
    import sqlalchemy as sa

    from margin.ledger.db import read_only_engine
    from margin.ledger.models import ledger

    wanted, found = set(request_ids), dict[str, dict[str, Any]]()
    engine = read_only_engine(url)  # the target gateway's ledger: read, never written
    deadline = time.monotonic() + wait_s
    try:
        while True:
            missing = sorted(wanted - found.keys())
            for start in range(0, len(missing), BATCH):
                query = sa.select(*(ledger.c[name] for name in LEDGER_FIELDS)).where(
                    ledger.c.request_id.in_(missing[start : start + BATCH]), ledger.c.kind == "request"
                )
                with engine.connect() as connection:
                    for row in connection.execute(query):
                        found[row.request_id] = {str(k): v for k, v in row._asdict().items()}
            if len(found) == len(wanted) or time.monotonic() > deadline:
                return found
            time.sleep(0.5)
    finally:
        engine.dispose()
