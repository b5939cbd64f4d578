"""Escaped logs: text a client or an upstream controls cannot forge a log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import uvicorn

from margin.logs import EscapingFormatter, configure, printable
from margin.serve import _server_options
from tests.helpers import fake_settings, server_logging_kept


def test_printable_escapes_control_characters_and_cuts() -> None:
    assert printable("/v1/x\r\nERROR forged\x1b[31m\x00") == "/v1/x\\x0d\\x0aERROR forged\\x1b[31m\\x00"
    assert printable("a\u2028b") == "a\\u2028b"
    assert printable("pay \u202egnp.exe\u2066x\u200f") == "pay \\u202egnp.exe\\u2066x\\u200f"  # bidi: no reordering
    assert printable("é ok") == "é ok"
    assert printable("x" * 500, limit=10) == "x" * 10 + "…"


def test_formatter_escapes_messages_and_tracebacks_keep_their_lines() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("margin", logging.WARNING, __file__, 1, "path %s", ("/a\nINFO fake",), None)
    assert formatter.format(record) == "WARNING path /a\\x0aINFO fake"
    try:
        raise ValueError("bad\rINFO fake")
    except ValueError:
        import sys

        failed = logging.LogRecord("margin", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    text = formatter.format(failed)
    assert "\r" not in text and "bad\\x0dINFO fake" in text and text.count("\n") >= 2


def test_the_servers_own_records_are_escaped_too(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """uvicorn logs an unhandled error's traceback itself ("Exception in ASGI application"): with its own
    logging config it had its own handler, which wrote a CR or an ANSI escape of the message as it came (a
    traceback keeps its line breaks, as margin's own do)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        with server_logging_kept() as servers:
            # uvicorn's loggers as a fresh `margin serve` process has them (a test that ran uvicorn in this process
            # without `server_logging_kept` gave them handlers of their own and stopped their propagation)
            root.handlers.clear()
            for lg in servers:
                lg.handlers[:], lg.propagate, lg.disabled, lg.level = [], True, False, logging.NOTSET
            settings = fake_settings(tmp_path / "ledger.db")
            configure(settings.server.log_level)
            uvicorn.Config(app="margin.serve:worker_app", **_server_options(settings))  # as `margin serve` does
            try:
                raise ValueError("bad\rINFO forged \x1b[31m")
            except ValueError:
                logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
            logged = capfd.readouterr().err
    finally:
        root.handlers[:], root.level = saved
    assert "Exception in ASGI application" in logged and "bad\\x0dINFO forged \\x1b[31m" in logged
    assert "\r" not in logged and "\x1b" not in logged
