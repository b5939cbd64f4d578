"""Run untrusted Python (generated code and its tests) in a confined subprocess.

The child (`sandbox_child.py`, run with `python -I` in a fresh temporary directory, environment emptied)
sets resource limits, moves into a private network namespace, drops root to `nobody`, forbids new
processes, and installs an audit hook against sockets, process creation, ctypes and writes outside its
directory. The parent adds the wall-clock timeout and kills the child's whole process group when it expires.
The layers that took effect are reported in the result, so a run on a host without namespaces says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("sandbox_child.py")
NOBODY = 65534
OUTPUT_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 512
    file_mb: int = 8
    isolate_network: bool = True
    drop_privileges: bool = True
    block_processes: bool = True
    audit: bool = True  # the in-process audit hook (off only to test the OS layers on their own)

    def child_settings(self, program: Path) -> dict[str, Any]:
        return {
            "program": str(program),
            "cpu_s": self.cpu_s,
            "memory_mb": self.memory_mb,
            "file_mb": self.file_mb,
            "isolate_network": self.isolate_network,
            "drop_privileges": self.drop_privileges,
            "block_processes": self.block_processes,
            "audit": self.audit,
        }


@dataclass(slots=True)
class SandboxResult:
    status: str  # passed | failed | timeout
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    layers: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _prepare(source: str, limits: SandboxLimits) -> tuple[Path, Path]:
    home = Path(tempfile.mkdtemp(prefix="margin-sandbox-"))
    program, settings = home / "program.py", home / "sandbox.json"
    program.write_text(source, encoding="utf-8")
    settings.write_text(json.dumps(limits.child_settings(program)), encoding="utf-8")
    if os.geteuid() == 0 and limits.drop_privileges:
        os.chown(home, NOBODY, NOBODY)
    return home, settings


def _split_layers(stderr: str) -> tuple[dict[str, Any], str]:
    first, _, rest = stderr.partition("\n")
    if first.startswith("SANDBOX "):
        try:
            return dict(json.loads(first.removeprefix("SANDBOX "))), rest
        except ValueError:
            return {}, stderr
    return {}, stderr


async def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` as a program; passed means exit status 0 within the limits."""
    limits = limits or SandboxLimits()
    home, settings = _prepare(source, limits)
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        str(CHILD),
        str(settings),
        cwd=home,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = await asyncio.wait_for(process.communicate(), limits.timeout_s)
    except TimeoutError:
        timed_out = True
        _kill_group(process.pid)
        out, err = await process.communicate()
    finally:
        _kill_group(process.pid)
        shutil.rmtree(home, ignore_errors=True)
    layers, stderr = _split_layers(err.decode(errors="replace"))
    status = "timeout" if timed_out else ("passed" if process.returncode == 0 else "failed")
    return SandboxResult(
        status,
        process.returncode,
        out.decode(errors="replace")[-OUTPUT_LIMIT:],
        stderr[-OUTPUT_LIMIT:],
        time.perf_counter() - started,
        layers,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
