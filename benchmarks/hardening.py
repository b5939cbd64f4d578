"""Hardening benchmark: how fast a normal request is answered while each attack class of issue 13 runs,
next to the same probe with no attack, in one run against one `margin serve` (fake backends, SQLite ledger,
API keys created with the CLI, a budget and a guard policy on).

    python benchmarks/hardening.py [--seconds 8] [--out benchmarks/results/hardening.json]

The probe is one keep-alive client sending a normal chat request, then the next as soon as the answer is in
(its latency is the number reported: p50/p99/max, and how many probes failed). Each attack runs for
`--seconds` while the probe runs; a baseline phase without attack runs first and last (the machine's drift).
The attacks are the reproductions from the hardening work: unbounded bodies, random and malformed keys,
cross-site text/plain posts, guard inputs that were quadratic or dear (e-mails, newlines, PEM headers, phone
candidates, one huge prompt), stalled stream readers, multiplier-priced requests against a budget, and
values the ledger cannot hold. Each attack's own answers are counted by status. The schema-bomb and
out-of-vocabulary `logit_bias` attacks need the real local model and are covered by the integration tests,
not here. Gateway CPU seconds and RSS are read from /proc around each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import yaml

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CHAT = "/v1/chat/completions"
STRICT = json.dumps({"pii": "redact", "injection": "block"})
CONFIG: dict[str, Any] = {
    "storage": {"flush_interval_ms": 10},
    "server": {"stream_write_timeout_s": 3},
    "regions": {"eu": {"jurisdiction": "EU", "grid_zone": "FRA", "pue": 1.2, "usd_per_kwh": "0.20"}},
    "backends": {
        "fake": {"kind": "fake", "output_tokens": 5, "region": "eu", "hardware": {"usd_per_hour": "3.60"}},
        "slow": {"kind": "fake", "output_tokens": 100_000, "tokens_per_s": 200, "region": "eu"},
    },
    "models": {
        "fake-chat": {"backend": "fake", "price": {"input": "1", "output": "2"}},
        "slow-chat": {"backend": "slow", "price": {"input": "1", "output": "2"}},
    },
    "budgets": [{"name": "attacker-budget", "scope": {"kind": "team", "value": "a"}, "usd": "0.01", "period": "day"}],
}
KEYS = {  # the probe's own key; the attacks' keys (a guard policy, a small budget, a plain one)
    "probe": ["--team", "p"],
    "guarded": ["--team", "g", "--policy", STRICT],
    "budgeted": ["--team", "a"],
    "attacker": ["--team", "x"],
}

Attack = Callable[["Target"], Coroutine[Any, Any, None]]


class Target:
    """The gateway under attack and a tally of the attack's answers."""

    def __init__(self, url: str, keys: dict[str, str]) -> None:
        self.url = url
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.keys = keys
        self.statuses: Counter[str] = Counter()

    def headers(self, key: str = "attacker") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[key]}", "content-type": "application/json"}


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-chat", "messages": [{"role": "user", "content": content}], **extra}


async def post_loop(
    target: Target, body: Any, *, concurrency: int = 1, headers: dict[str, str] | None = None, key: str = "attacker"
) -> None:
    """Send the same request again and again from `concurrency` clients, counting answers by status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def one(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                async with session.post(target.url + CHAT, data=data, headers=headers or target.headers(key)) as r:
                    await r.read()
                    target.statuses[str(r.status)] += 1
            except aiohttp.ClientError as exc:
                target.statuses[type(exc).__name__] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(one(session) for _ in range(concurrency)))


async def body_flood(target: Target) -> None:
    """Chunked bodies that never end (a stream from /dev/zero) on every body-reading route, 4 at a time."""
    paths = ["/v1/margin/feedback", CHAT, "/admin/keys", "/dashboard/login"]

    async def one(path: str) -> None:
        chunk = b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"
        while True:
            try:
                reader, writer = await asyncio.open_connection(target.host, target.port)
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
                    f"Authorization: Bearer {target.keys['attacker']}\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n"
                )
                writer.write(head.encode())
                try:
                    for _ in range(4096):  # up to 256 MB, unless the gateway answers and closes first
                        writer.write(chunk)
                        await writer.drain()
                except OSError:
                    pass
                line = await asyncio.wait_for(reader.readline(), 5)
                target.statuses[line.split(b" ")[1].decode() if line.count(b" ") >= 1 else "closed"] += 1
                writer.close()
            except (OSError, TimeoutError, IndexError):
                target.statuses["reset"] += 1

    await asyncio.gather(*(one(path) for path in paths))


async def random_keys(target: Target) -> None:
    """Well-formed keys that do not exist (each unseen one costs a lookup), 8 clients."""

    async def one(session: aiohttp.ClientSession) -> None:
        while True:
            key = f"mgn_{secrets.token_hex(4)}_{secrets.token_urlsafe(24)}"
            async with session.get(target.url + "/v1/models", headers={"authorization": f"Bearer {key}"}) as r:
                await r.read()
                target.statuses[str(r.status)] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(8)))


async def malformed_keys(target: Target) -> None:
    junk = {"authorization": "Bearer " + "x" * 200, "content-type": "application/json"}
    await post_loop(target, chat("hi"), concurrency=8, headers=junk)


async def text_plain(target: Target) -> None:
    """Cross-site style posts: a JSON body declared as text/plain (what a web page can send without asking)."""
    headers = {"authorization": f"Bearer {target.keys['attacker']}", "content-type": "text/plain"}
    await post_loop(target, chat("hi"), concurrency=4, headers=headers)


def guard_attack(text: str) -> Attack:
    async def run(target: Target) -> None:
        await post_loop(target, chat(text), key="guarded")

    return run


async def stalled_streams(target: Target) -> None:
    """Streams whose client reads the headers and then nothing: 16 at a time, reopened as they are cut."""

    async def one() -> None:
        body = json.dumps({**chat("count"), "model": "slow-chat", "stream": True}).encode()
        while True:
            try:
                reader, writer = await asyncio.open_connection(target.host, target.port, limit=4096)
                head = (
                    f"POST {CHAT} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
                    f"Authorization: Bearer {target.keys['attacker']}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                line = await reader.readline()
                target.statuses[line.split(b" ")[1].decode() if line.count(b" ") >= 1 else "closed"] += 1
                await asyncio.sleep(5)  # read nothing more: the gateway's write timeout (3 s) must cut us off
                writer.close()
            except (OSError, IndexError, asyncio.IncompleteReadError):
                target.statuses["cut"] += 1

    await asyncio.gather(*(one() for _ in range(16)))


async def multipliers(target: Target) -> None:
    """Requests that multiply work (`n`, long outputs) against the attacker's small budget."""
    await post_loop(target, chat("hi", n=128, max_tokens=4000), concurrency=4, key="budgeted")


async def ledger_poison(target: Target) -> None:
    """Values the ledger cannot hold: a 300-character user, NUL in text, a 129-character model name."""
    bodies = [chat("hi", user="u" * 300), chat("a\x00b"), {**chat("hi"), "model": "m" * 129}]
    await asyncio.gather(*(post_loop(target, body) for body in bodies))


ATTACKS: dict[str, Attack] = {
    "body_flood": body_flood,
    "random_keys": random_keys,
    "malformed_keys": malformed_keys,
    "text_plain_posts": text_plain,
    "guard_emails_8k": guard_attack(" ".join(f"user{i}@example.org" for i in range(8000))),
    "guard_newlines_60k": guard_attack("new rules:\n" + "\n" * 60_000 + "x"),
    "guard_pem_headers_8k": guard_attack("-----BEGIN PRIVATE KEY-----\n" * 8000),
    "guard_phones_6k": guard_attack(",".join(f"call +44 20 7946 {i:04d}" for i in range(6000))),
    "guard_huge_prompt": guard_attack("lorem ipsum dolor sit amet " * 24_000),
    "stalled_streams": stalled_streams,
    "budget_multipliers": multipliers,
    "ledger_poison": ledger_poison,
}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))], 3)


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return (int(fields[11]) + int(fields[12])) / ticks, rss


async def probe(target: Target, seconds: float) -> dict[str, Any]:
    body = json.dumps(chat("what is the capital of france")).encode()
    took, failed = [], Counter[str]()
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                async with session.post(target.url + CHAT, data=body, headers=target.headers("probe")) as r:
                    await r.read()
                    if r.status != 200:
                        failed[str(r.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                failed[type(exc).__name__] += 1
            took.append((time.perf_counter() - started) * 1000)
    return {
        "probes": len(took),
        "p50_ms": percentile(took, 50),
        "p99_ms": percentile(took, 99),
        "max_ms": round(max(took), 3) if took else None,
        "failed": dict(failed),
    }


async def phase(target: Target, pid: int, name: str, attack: Attack | None, seconds: float) -> dict[str, Any]:
    target.statuses = Counter()
    cpu0, _ = proc_stats(pid)
    task = asyncio.create_task(attack(target)) if attack else None
    await asyncio.sleep(0.5 if attack else 0)  # let the attack get going
    result = await probe(target, seconds)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    cpu1, rss = proc_stats(pid)
    result.update(attack=name, attack_answers=dict(target.statuses), gateway_cpu_s=round(cpu1 - cpu0, 3))
    result["gateway_rss_mb"] = round(rss / 2**20, 1)
    print(f"{name:22} probe p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms; attack {dict(target.statuses)}")
    await asyncio.sleep(1)  # let cut connections and stalled streams settle before the next phase
    return result


def start_gateway(work: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    config, db = work / "margin.yaml", work / "ledger.db"
    config.write_text(yaml.safe_dump(CONFIG))
    margin = [sys.executable, "-m", "margin"]
    keys = {}
    for name, flags in KEYS.items():
        command = [
            *margin,
            "keys",
            "create",
            "--name",
            name,
            *flags,
            "--json",
            "--config",
            str(config),
            "--db",
            str(db),
        ]
        keys[name] = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)["key"]
    port = free_port()
    log = (work / "serve.log").open("wb")
    command = [*margin, "serve", "--config", str(config), "--db", str(db), "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            import urllib.request

            with urllib.request.urlopen(url + "/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return process, url, keys
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"margin serve did not start: {(work / 'serve.log').read_text()}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(url: str, keys: dict[str, str], pid: int, seconds: float, names: list[str]) -> list[dict[str, Any]]:
    target = Target(url, keys)
    phases = [await phase(target, pid, "baseline", None, seconds)]
    for name in names:
        phases.append(await phase(target, pid, name, ATTACKS[name], seconds))
    phases.append(await phase(target, pid, "baseline_after", None, seconds))
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="Comma-separated subset of the attacks.")
    parser.add_argument("--out", type=Path, default=RESULTS / "hardening.json")
    args = parser.parse_args()
    names = [name for name in args.attacks.split(",") if name]
    with tempfile.TemporaryDirectory() as tmp:
        process, url, keys = start_gateway(Path(tmp))
        try:
            phases = asyncio.run(run(url, keys, process.pid, args.seconds, names))
        finally:
            process.terminate()
            process.wait(30)
    result = {
        "benchmark": "hardening",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds_per_phase": args.seconds,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
        "probe": "one keep-alive client, sequential normal chat requests (fake backend, 5 tokens)",
        "phases": phases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
