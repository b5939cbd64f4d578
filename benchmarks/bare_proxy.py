"""The floor for a Python gateway: a bare ASGI pass-through on the same server stack as margin (uvicorn with
uvloop and httptools, or granian) and the same upstream client (aiohttp), doing nothing else. Whole answers
are read and sent in one piece; streams (`"stream": true` in the body) are passed on as the upstream's
reads arrive, each read in one send. Used as the `bare` path of benchmarks/gateway_sweep.py, so margin's
added latency splits into "an extra hop" and "margin's work".

    python benchmarks/bare_proxy.py --port 9002 --upstream http://127.0.0.1:9001 [--server uvicorn|granian]
                                    [--workers N]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import aiohttp

UPSTREAM_ENV = "BARE_PROXY_UPSTREAM"


def make_app(upstream: str) -> Any:
    state: dict[str, aiohttp.ClientSession] = {}

    async def lifespan(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
                await send({"type": "lifespan.startup.complete"})
            else:
                await state["session"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        stream = b'"stream":true' in body.replace(b" ", b"")
        async with state["session"].post(
            upstream + scope["path"], data=body, headers={"content-type": "application/json"}
        ) as response:
            headers = [(b"content-type", response.headers.get("content-type", "application/json").encode())]
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            if not stream:
                await send({"type": "http.response.body", "body": await response.read()})
                return
            async for data in response.content.iter_any():
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def app_from_env() -> Any:
    """For servers that take an import string (granian): the upstream from the environment."""
    return make_app(os.environ[UPSTREAM_ENV].rstrip("/"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes on the one port")
    args = parser.parse_args()
    if args.server == "granian":
        from serve_granian import serve

        os.environ[UPSTREAM_ENV] = args.upstream
        serve("bare_proxy:app_from_env", args.port)
        return
    import uvicorn

    os.environ[UPSTREAM_ENV] = args.upstream  # each worker process builds the app from it
    uvicorn.run(
        "bare_proxy:app_from_env" if args.workers > 1 else make_app(args.upstream.rstrip("/")),
        factory=args.workers > 1,
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
