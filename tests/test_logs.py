"""Escaped logs: text a client or an upstream controls cannot forge a log line."""

from __future__ import annotations

import logging

from margin.logs import EscapingFormatter, printable


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
