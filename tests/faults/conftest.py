"""The fault upstream (`tests/fault_upstream.py`) as its own process, and helpers to read what it counted."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FaultUpstream:
    url: str  # http://127.0.0.1:N

    def base(self, mode: str, tag: str) -> str:
        """The `base_url` of a backend whose every request meets `mode` (counted under `mode/tag`)."""
        return f"{self.url}/{mode}/{tag}/v1"

    def counts(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/stats", timeout=5).json())

    def count(self, mode: str, tag: str) -> int:
        return self.counts().get(f"{mode}/{tag}", 0)

    def set_mode(self, tag: str, mode: str) -> None:
        """The mode of `/dyn/<tag>/v1` from now on."""
        httpx.post(f"{self.url}/mode/{tag}", json={"mode": mode}, timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def fault_upstream() -> Iterator[FaultUpstream]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fault_upstream", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("port "):
            pytest.fail(f"the fault upstream did not start: {line!r}")
        yield FaultUpstream(f"http://127.0.0.1:{int(line.split()[1])}")
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
