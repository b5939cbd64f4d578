"""The processes of the gateway sweep: the fake upstream, the bare proxy, `margin serve` and LiteLLM's proxy,
each in its own process with one worker, and the CPU time each uses (from /proc, children included). The
bare proxy and margin run on the same server (`--server uvicorn|granian`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from overhead import wait_ready

HERE = Path(__file__).resolve().parent
LITELLM_VENV = HERE / ".venv-litellm"
LITELLM_VERSION = "1.106.2"  # pinned: benchmark-only peer (1.107.0 was a compromised release; never use it)
LITELLM_KEY = "sk-bench-master-key"
CLOCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def workers_of(base: str) -> tuple[str, int]:
    """`margin_w2` → (`margin`, 2); a name without the suffix runs one process."""
    found = re.fullmatch(r"(.+)_w([1-9][0-9]*)", base)
    return (found[1], int(found[2])) if found else (base, 1)


def margin_config(workdir: Path, upstream_port: int, port: int) -> Path:
    """Ledger (SQLite), a global budget and a global rate limit, both far above what the sweep spends, so
    they are checked and charged on every request without rejecting any; an API key is created before the
    start (`create_key`), so every request is authenticated too."""
    config = workdir / "margin.yaml"
    config.write_text(
        f"server: {{log_level: warning, port: {port}}}\n"
        f"storage: {{ledger: 'sqlite:///{workdir / 'ledger.db'}'}}\n"
        "backends:\n"
        f"  up: {{kind: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1'}}\n"
        "models:\n"
        "  bench: {backend: up, upstream_model: fake-upstream, price: {input: '0.15', output: '0.60'}}\n"
        "budgets:\n"
        "  - {name: bench-budget, scope: {kind: global}, usd: 1000000, period: month}\n"
        "limits:\n"
        "  - {scope: {kind: global}, rpm: 100000000, tpm: 10000000000}\n"
        "admission: {max_streams_per_key: 1000000}\n"  # one key carries the whole load
    )
    return config


def litellm_config(workdir: Path, upstream_port: int) -> Path:
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/fake-upstream\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-fake\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
        "  json_logs: false\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    return config


def create_key(config: Path, env: dict[str, str] | None) -> str:
    """An API key in margin's ledger (the gateway then runs closed: every request is authenticated)."""
    command = [sys.executable, "-m", "margin", "keys", "create", "--name", "bench", "--config", str(config), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return str(json.loads(done.stdout)["key"])


class Servers:
    """Starts the paths' processes and stops them on exit. `direct` is the upstream itself."""

    def __init__(self, workdir: Path, free_port: Callable[[], int], server: str = "uvicorn") -> None:
        self.workdir = workdir
        self.free_port = free_port
        self.server = server
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.keys: dict[str, str] = {}

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for process in reversed(list(self.processes.values())):
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def start(
        self,
        paths: list[str],
        start_upstream: Callable[[int], subprocess.Popen[bytes]],
        margin_before_src: Path | None = None,
    ) -> None:
        self.ports["direct"] = self.free_port()
        self.processes["direct"] = start_upstream(self.ports["direct"])
        for name in paths:  # `bare`, `margin`, either on the other server (`bare@granian`, `margin@uvicorn`…) or
            base, _, server = name.partition("@")  # with N worker processes on its port (`bare_w2`, `margin_w2`)
            base, workers = workers_of(base)
            if base == "bare":
                self._start_bare(name, server or self.server, workers)
            elif base == "margin" and (server or workers > 1):
                self._start_margin(name, server=server, workers=workers)
        if "margin" in paths:
            self._start_margin("margin")
        if "margin_before" in paths:
            if margin_before_src is None:
                raise SystemExit("the margin_before path needs --margin-before-src")
            self._start_margin("margin_before", margin_before_src)
        if "litellm" in paths:
            self._start_litellm()

    def _start_margin(self, name: str, src: Path | None = None, server: str | None = None, workers: int = 1) -> None:
        """`margin serve` from this environment, or from another source tree (`src`: an older checkout's
        src/ directory, for before/after comparisons in one run)."""
        port = self.ports[name] = self.free_port()
        workdir = self.workdir / name
        workdir.mkdir(exist_ok=True)
        config = margin_config(workdir, self.ports["direct"], port)
        env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
        self.keys[name] = create_key(config, env)
        command = [sys.executable, "-m", "margin", "serve", "--config", str(config), "--workers", str(workers)]
        if (server or self.server) == "granian":
            command = [sys.executable, str(HERE / "serve_granian.py"), "--config", str(config), "--port", str(port)]
        self.processes[name] = process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
        wait_ready(f"http://127.0.0.1:{port}/healthz", process)

    def _start_bare(self, name: str, server: str, workers: int = 1) -> None:
        port = self.ports[name] = self.free_port()
        upstream = f"http://127.0.0.1:{self.ports['direct']}"
        command = [sys.executable, str(HERE / "bare_proxy.py"), "--port", str(port), "--upstream", upstream]
        self.processes[name] = process = subprocess.Popen([*command, "--server", server, "--workers", str(workers)])
        wait_ready(f"http://127.0.0.1:{port}/", process)

    def _start_litellm(self) -> None:
        port = self.ports["litellm"] = self.free_port()
        config = litellm_config(self.workdir, self.ports["direct"])
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",
            "DISABLE_SCHEMA_UPDATE": "True",
        }
        env.pop("DATABASE_URL", None)
        command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--num_workers", "1"]
        log = (self.workdir / "litellm.log").open("wb")
        self.processes["litellm"] = process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        wait_ready(f"http://127.0.0.1:{port}/health/liveliness", process, timeout_s=180)

    def auth(self, name: str) -> str | None:
        return LITELLM_KEY if name == "litellm" else self.keys.get(name)

    def port(self, name: str) -> int:
        return self.ports[name]

    def exit_code(self, name: str) -> int | None:
        """None while the path's process runs (or for a path without one); else its exit code (< 0: signal)."""
        process = self.processes.get(name)
        return None if process is None else process.poll()

    def pid(self, name: str) -> int | None:
        process = self.processes.get(name)
        return process.pid if process else None

    def versions(self) -> dict[str, Any]:
        from importlib.metadata import version

        found: dict[str, Any] = {"margin": version("margin")}
        if "litellm" in self.processes:
            found["litellm"] = LITELLM_VERSION
        return found
