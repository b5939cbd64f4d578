"""A fake OpenAI upstream for gateway benchmarks: a bare ASGI app (no framework) on uvicorn that answers at
once with a fixed chat completion (or a fixed SSE stream of N chunks). Run it as its own process:

    python benchmarks/fake_upstream.py --port 9001 [--tokens 16]
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import uvicorn


def _completion(tokens: int) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": "fake-upstream",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "tok " * tokens},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens},
        }
    )


def _stream(tokens: int) -> bytes:
    head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake-upstream"}
    events = [
        {**head, "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]} for _ in range(tokens)
    ]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append(
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens},
        }
    )
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def make_app(tokens: int) -> Any:
    whole, stream = _completion(tokens), _stream(tokens)
    json_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(whole)).encode())]
    sse_headers = [(b"content-type", b"text/event-stream")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b'"stream":true' in body.replace(b" ", b""):
            await send({"type": "http.response.start", "status": 200, "headers": sse_headers})
            await send({"type": "http.response.body", "body": stream})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": whole})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.tokens),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
