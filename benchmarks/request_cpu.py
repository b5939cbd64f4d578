"""margin's own CPU per request, without the network: the ASGI app (`margin.app.build_app`, the gateway sweep's
config: an API key, a global budget and rate limit, metrics, the SQLite ledger) called directly in this
process, with the upstream's HTTP replaced by the fake upstream's canned answers (`OpenAIBackend._try`
patched: everything from the edge to the outbox write runs, aiohttp and the sockets do not). The event loop
thread's CPU per request, in rounds; the minimum is the least disturbed by other work on the machine.

    python benchmarks/request_cpu.py [--mode json|sse] [--api chat|responses|messages] [--requests 2000]
                                     [--rounds 7] [--profile out.prof] [--shared-core] [--app margin|bare]

`--shared-core` pins this process to the last CPU beside a neighbour process (a JSON-encoding loop, the stand-in
for the load generator and the upstream that share the gateway sweep's two cores) and sleeps 1 ms before each
request (not counted), so each request starts after the neighbour has had the core, its caches and branch
predictors: as in the live gateway. `--app bare` runs a pass-through ASGI app (the body read, the same canned
upstream answer, head and body sent) in the same harness.

Compare two source trees by alternating runs (`PYTHONPATH=<tree>/src`): these machines are too noisy for
differences under ~10 % in the gateway sweep's process CPU, while this measures only margin's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_upstream import _completion, _stream
from margin.app import build_app
from margin.backends import openai_compat
from margin.config import load_settings
from margin.serve import tune_gc
from sweep_servers import create_key, margin_config

ANSWERS = {False: _completion(16), True: _stream(16)}


class _Content:
    def __init__(self, data: bytes) -> None:
        self.reads = [data]

    async def readany(self) -> bytes:
        return self.reads.pop() if self.reads else b""

    def set_exception(self, exc: BaseException) -> None:
        return None


class _Response:
    status = 200

    def __init__(self, data: bytes) -> None:
        self.content, self._data = _Content(data), data
        self.content_length, self.headers = len(data), {"content-type": "application/json"}  # as the upstream sends

    async def read(self) -> bytes:
        return self._data

    def release(self) -> None:
        return None

    def close(self) -> None:
        return None


async def _try(self: Any, url: str, data: bytes) -> _Response:
    return _Response(ANSWERS[b'"stream":true' in data])


async def _bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The bare proxy's work in this harness: the body read, the upstream's answer (canned), head and body sent."""
    body = (await receive())["body"]
    response = await _try(None, scope["path"], body)
    if b'"stream":true' in body:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        while data := await response.content.readany():
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    data = await response.read()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _scope(headers: list[tuple[bytes, bytes]], path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": list(headers), "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "state": {},
    }  # fmt: skip


async def measure(args: argparse.Namespace) -> list[float]:
    config = margin_config(Path(tempfile.mkdtemp()), 9, 8000)  # the upstream port is never dialled
    key = create_key(config, None)
    app = build_app(load_settings(config), config_path=config)
    data: dict[str, Any] = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
    path = "/v1/chat/completions"
    if args.api == "responses":  # the same request through the Responses API (translated to this chat)
        data = {"model": "bench", "input": "Say hello.", "max_output_tokens": 16}
        path = "/v1/responses"
    if args.api == "messages":  # the same through Anthropic's Messages API (the key in `x-api-key`, as its SDK sends)
        data = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
        path = "/v1/messages"
    if args.mode == "sse":
        data["stream"] = True
    body = orjson.dumps(data)
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"x-api-key", key.encode()) if args.api == "messages" else (b"authorization", f"Bearer {key}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    results: list[float] = []
    async with app.router.lifespan_context(app):
        tune_gc()
        for _ in range(500):  # warm-up: caches, the key lookup, the budget counter's seed
            await app(_scope(headers, path), receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"the gateway answered {sent[:2]}")
        profile = cProfile.Profile() if args.profile else None
        target: Any = _bare if args.app == "bare" else app
        for _ in range(args.rounds):
            if profile is not None:
                profile.enable()
            spent = 0.0
            for _ in range(args.requests):
                sent.clear()
                if args.shared_core:
                    await asyncio.sleep(0.001)  # the neighbour's turn on the core
                started = time.thread_time()
                await target(_scope(headers, path), receive, send)
                spent += time.thread_time() - started
            results.append(spent / args.requests * 1e6)
            if profile is not None:
                profile.disable()
            await asyncio.sleep(0.2)  # the ingester moves the round's rows
        if profile is not None:
            profile.dump_stats(args.profile)
    return sorted(results)


NEIGHBOUR = """
import json, random
data = [{f"k{i}": [random.random() for _ in range(20)]} for i in range(2000)]
while True:
    json.loads(json.dumps(data))
"""


def _share_core() -> subprocess.Popen[bytes]:
    """This process and a busy neighbour on the last CPU (Linux)."""
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
    os.sched_setaffinity(neighbour.pid, {cpu})
    return neighbour


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("json", "sse"), default="json")
    parser.add_argument("--api", choices=("chat", "responses", "messages"), default="chat")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shared-core", action="store_true", help="a neighbour process has the core between requests")
    parser.add_argument("--app", choices=("margin", "bare"), default="margin")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of the measured rounds")
    args = parser.parse_args()
    openai_compat.OpenAIBackend._try = _try  # type: ignore[method-assign,assignment]
    neighbour = _share_core() if args.shared_core else None
    try:
        results = uvloop.run(measure(args))
    finally:
        if neighbour is not None:
            neighbour.kill()
    rounded = [round(r, 1) for r in results]
    median = rounded[len(rounded) // 2]
    where = "shared core" if args.shared_core else "own core"
    print(f"{args.app} {args.api} {args.mode} ({where}): event-loop CPU per request", end=" ")
    print(f"min {rounded[0]} median {median} µs {rounded}")


if __name__ == "__main__":
    main()
