"""A recording OpenAI-compatible upstream for attack tests: a stdlib HTTP server on a thread that answers
every chat completion with a fixed answer and keeps the JSON bodies it received, so a test can see what the
gateway forwarded."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "created": 0,
    "model": "up",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@dataclass
class Recorder:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def recording_upstream() -> Iterator[Recorder]:
    recorder = Recorder("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("content-length") or 0)
            recorder.bodies.append(json.loads(self.rfile.read(size)))
            payload = json.dumps(ANSWER).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
