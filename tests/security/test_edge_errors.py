"""Issue 13 §5 (third bullet): upstream and Redis error texts never reach a client verbatim, and what the log
keeps of them is escaped (no forged log lines)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.helpers import free_port
from tests.security.conftest import FAKE_CONFIG, ServeFactory
from tests.servers import http_thread, redis_server, reply_json

CHAT = "/v1/chat/completions"
SECRET = "sk-live-UPSTREAM-SECRET-123 on 10.9.8.7:8443"
FORGED = "\r\nERROR margin: admin key mgn_forged created"


class _Leaky(BaseHTTPRequestHandler):
    """An upstream whose errors carry its own secrets and a forged log line (status from the model name)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        status = int(body["model"].removeprefix("status-"))
        payload = {"error": {"message": f"Incorrect API key provided: {SECRET}{FORGED}", "code": "x\r\ny"}}
        reply_json(self, status, payload)

    def log_message(self, format: str, *args: object) -> None:
        return None


@contextmanager
def leaky_upstream() -> Iterator[str]:
    with http_thread(_Leaky) as base:
        yield f"{base}/v1"


def test_upstream_error_texts_stay_out_of_answers_and_logs_are_escaped(served: ServeFactory) -> None:
    """An upstream (or whoever controls it) answers errors that quote its key, its address and a CRLF-forged
    log line; a caller triggers each status and reads the answer."""
    with leaky_upstream() as base_url:
        overrides = {
            "backends": {**FAKE_CONFIG["backends"], "up": {"kind": "openai", "base_url": base_url}},
            "models": {
                f"s{status}": {
                    "backend": "up",
                    "upstream_model": f"status-{status}",
                    "price": {"input": "1", "output": "1"},
                }
                for status in (400, 401, 429, 500, 503)
            },
        }
        with served(overrides, keys={"user": ["--team", "a"]}) as gw, gw.client(gw.keys["user"]) as client:
            seen = {}
            for status in (400, 401, 429, 500, 503):
                body = {"model": f"s{status}", "messages": [{"role": "user", "content": "hi"}]}
                response = client.post(CHAT, json=body)
                seen[status] = response.status_code
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                text = response.text
                for leak in ("UPSTREAM-SECRET", "10.9.8.7", "mgn_forged", "Incorrect API key"):
                    assert leak not in text, (status, text)
                assert "\r" not in str(error["code"]) and "\n" not in str(error["code"])
            assert seen == {400: 400, 401: 502, 429: 429, 500: 502, 503: 502}
            log = (gw.db.parent / "serve.log").read_text()
        assert "UPSTREAM-SECRET" in log  # the operator still sees what the upstream said ...
        assert not any(line.startswith("ERROR margin: admin key") for line in log.splitlines())  # ... escaped
        assert "\\x0d\\x0aERROR margin" in log


def test_redis_error_texts_stay_out_of_answers(served: ServeFactory, tmp_path: Path) -> None:
    """The budget store (Redis) goes away under a running gateway; callers read the 503's text for hosts,
    ports and Redis internals."""
    port = free_port()
    with redis_server(port, tmp_path) as url:
        overrides = {
            "storage": {"flush_interval_ms": 10, "redis": url},
            "budgets": [{"name": "all", "scope": {"kind": "global"}, "usd": "100", "period": "month"}],
        }
        with served(overrides, keys={"user": ["--team", "a"]}) as gw, gw.client(gw.keys["user"]) as client:
            body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
            assert client.post(CHAT, json=body).status_code == 200
            _stop_redis(port)
            response = client.post(CHAT, json=body)
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "governance_unavailable"
            for leak in (str(port), "127.0.0.1", "Connection", "Error", "redis://"):
                assert leak not in error["message"], error["message"]


def _stop_redis(port: int) -> None:
    """SHUTDOWN the private redis-server (its context manager then finds it gone)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        sock.recv(100)
