"""What margin's HTTP/1.1 protocol (margin.api.heads: the header bound, the head and body deadlines, the
connection cap) costs a request against uvicorn's own httptools protocol, which the bare proxy runs.

    python benchmarks/protocol_cost.py [--requests 20000] [--rounds 7]

Each protocol gets a fake transport and a trivial ASGI app; requests are fed as a client on a kept-alive
connection sends them, each in one read (the usual case: a chat request's head and body arrive together), or
each cut into three reads (head, half the body, the rest: a timer is armed and moved). CPU µs per request,
this process, the minimum over alternating rounds. Writes benchmarks/results/protocol_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from margin.api.heads import BoundedHttpToolsProtocol

RESULTS = Path(__file__).resolve().parent / "results"
BODY = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\n"
    b"authorization: Bearer sk-margin-0123456789abcdef\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
SPLIT = len(REQUEST) - len(BODY)


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def per_request(protocol_class: type[HttpToolsProtocol], reads: list[bytes], n: int) -> float:
    config = Config(app, lifespan="off", access_log=False)
    config.load()
    protocol = protocol_class(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)
    began = time.process_time()
    for i in range(n):
        for data in reads:
            protocol.data_received(data)
        # head and body written: the response is complete (sleep(0) lets the app task run; no event to wait on)
        while transport.writes < 2 * (i + 1):  # noqa: ASYNC110
            await asyncio.sleep(0)
    return (time.process_time() - began) / n * 1e6


async def measure(n: int, rounds: int) -> dict[str, Any]:
    protocols = {"uvicorn": HttpToolsProtocol, "margin": BoundedHttpToolsProtocol}
    shapes = {
        "one_read": [REQUEST],
        "three_reads": [REQUEST[:SPLIT], REQUEST[SPLIT : SPLIT + 30], REQUEST[SPLIT + 30 :]],
    }
    out: dict[str, Any] = {}
    for shape, reads in shapes.items():
        seen: dict[str, list[float]] = {name: [] for name in protocols}
        for _ in range(rounds):
            for name, cls in protocols.items():
                seen[name].append(await per_request(cls, reads, n))
        best = {name: min(values) for name, values in seen.items()}
        out[shape] = {
            "cpu_us_per_request_min": {name: round(value, 2) for name, value in best.items()},
            "rounds": {name: [round(v, 2) for v in values] for name, values in seen.items()},
            "margin_minus_uvicorn_us": round(best["margin"] - best["uvicorn"], 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "protocol_cost.json")
    args = parser.parse_args()
    load = os.getloadavg()
    result = {
        "benchmark": "protocol_cost",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_before": load},
        "requests": args.requests,
        "shapes": uvloop.run(measure(args.requests, args.rounds)),
    }
    result["machine"]["load_avg_after"] = os.getloadavg()
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["shapes"], indent=2))


if __name__ == "__main__":
    main()
