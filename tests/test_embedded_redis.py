"""An embedded redis-server that cannot be started again (no memory to fork, its binary gone) leaves the
supervisor running and is tried again after a growing pause. Before, `revive` let the OSError out of the
supervisor's pass: the supervisor ended, and every worker with it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from margin.workers import MAX_REVIVE_BACKOFF_S, EmbeddedRedis


def _dead(tmp_path: Path, command: list[str]) -> EmbeddedRedis:
    server = EmbeddedRedis(command, tmp_path / "redis.sock", timeout_s=10.0)
    server.process = subprocess.Popen([sys.executable, "-c", "pass"])
    server.process.wait()
    return server


def test_a_redis_that_cannot_start_again_is_retried_later_without_ending_the_supervisor(tmp_path: Path) -> None:
    server = _dead(tmp_path, [str(tmp_path / "no-such-redis-server")])
    server.revive()  # FileNotFoundError before: out of the supervisor's pass
    first = server.retry_at
    assert first > time.monotonic() and server.backoff_s == 1.0
    server.revive()  # within the pause: not tried again
    assert server.retry_at == first
    server.retry_at = 0.0
    server.revive()
    assert server.backoff_s == 2.0
    server.backoff_s = MAX_REVIVE_BACKOFF_S
    server.retry_at = 0.0
    server.revive()
    assert server.backoff_s == MAX_REVIVE_BACKOFF_S  # held there


def test_a_redis_that_starts_but_never_answers_is_killed_and_tried_again(tmp_path: Path) -> None:
    server = _dead(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    server.revive()
    assert time.monotonic() - started < 9  # the revival's own short wait, not the start's 10 s
    assert server.process is not None and server.process.poll() is not None  # killed, not left running
    assert server.retry_at > time.monotonic()
