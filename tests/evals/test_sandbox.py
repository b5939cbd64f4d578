"""The code-execution sandbox against the escapes the issue lists: an infinite loop, fork (and spawning a
program), writing outside the temp dir, the network, and memory. Each is tried with every layer on, and the
OS layers are also tried on their own (audit hook off) to show they hold without it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from margin.evals.sandbox import SandboxLimits, run_python

FULL = SandboxLimits(timeout_s=5, cpu_s=5)
OS_ONLY = SandboxLimits(timeout_s=5, cpu_s=5, audit=False)


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host's loopback that records whether anyone connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    hits: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            hits.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()
    assert not hits, "a sandboxed program reached the host's loopback"


async def test_a_normal_program_runs_and_may_use_its_own_directory() -> None:
    result = await run_python("open('note.txt', 'w').write('hi')\nprint(open('note.txt').read(), 6 * 7)", FULL)
    assert result.passed and result.stdout.strip() == "hi 42"
    assert result.layers["network"] in ("namespace", "audit-only") and result.layers["audit"] is True


async def test_a_failing_assertion_fails() -> None:
    result = await run_python("assert 1 + 1 == 3, 'arithmetic'", FULL)
    assert result.status == "failed" and "AssertionError: arithmetic" in result.stderr


@pytest.mark.parametrize("limits", [FULL, OS_ONLY], ids=["full", "os-only"])
async def test_an_infinite_loop_is_killed_at_the_timeout(limits: SandboxLimits) -> None:
    result = await run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1, cpu_s=30, audit=limits.audit))
    assert result.status == "timeout" and not result.passed


async def test_cpu_time_limit_stops_a_busy_loop_even_without_the_wall_clock() -> None:
    result = await run_python("while True:\n    pass\n", SandboxLimits(timeout_s=30, cpu_s=1))
    assert result.status == "failed" and result.returncode is not None and result.returncode < 0


@pytest.mark.parametrize("limits", [FULL, OS_ONLY], ids=["full", "os-only"])
async def test_fork_fails(limits: SandboxLimits) -> None:
    program = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint('forked', pid)\n"
    result = await run_python(program, limits)
    assert not result.passed and "forked" not in result.stdout
    assert "PermissionError" in result.stderr or "BlockingIOError" in result.stderr


@pytest.mark.parametrize("limits", [FULL, OS_ONLY], ids=["full", "os-only"])
async def test_spawning_a_program_fails(limits: SandboxLimits, tmp_path: Path) -> None:
    marker = tmp_path / "spawned"
    program = f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])\n"
    result = await run_python(program, limits)
    assert not result.passed and not marker.exists()


async def test_writing_outside_the_sandbox_directory_fails(tmp_path: Path) -> None:
    targets = [tmp_path / "escaped.txt", Path("/tmp") / f"margin-escape-{tmp_path.name}.txt"]
    for target in targets:
        result = await run_python(f"open({str(target)!r}, 'w').write('x')\n", FULL)
        assert not result.passed and "PermissionError" in result.stderr
        assert not target.exists()


async def test_deleting_or_renaming_outside_the_sandbox_fails(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("mine")
    for program in (f"import os\nos.remove({str(victim)!r})", f"import os\nos.rename({str(victim)!r}, 'x')"):
        result = await run_python(program, FULL)
        assert not result.passed
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("limits", [FULL, OS_ONLY], ids=["full", "os-only"])
async def test_the_network_is_unreachable(limits: SandboxLimits, listener: int) -> None:
    program = f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {listener}))\nprint('in')"
    result = await run_python(program, limits)
    if not limits.audit and result.layers.get("network") != "namespace":
        pytest.fail(f"no network namespace on this host, so only the audit hook blocks sockets: {result.layers}")
    assert not result.passed and "in" not in result.stdout.split()


async def test_memory_beyond_the_limit_fails() -> None:
    result = await run_python("block = bytearray(2 * 1024 ** 3)\nprint(len(block))", SandboxLimits(memory_mb=256))
    assert not result.passed and "MemoryError" in result.stderr


async def test_the_audit_hook_cannot_be_outvoted_or_bypassed_with_ctypes() -> None:
    another_hook = "import sys, socket\nsys.addaudithook(lambda *a: None)\nsocket.socket()\nprint('socket')"
    for program in (another_hook, "import ctypes\nctypes.CDLL(None)\nprint('loaded')"):
        result = await run_python(program, FULL)
        assert not result.passed and "PermissionError" in result.stderr
        assert not result.stdout.strip()
