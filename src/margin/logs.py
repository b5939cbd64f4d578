"""Log lines nobody can forge: text a client or an upstream controls (paths, error messages) is escaped
before it reaches a log, so a CR/LF, an ANSI escape or a NUL in it cannot start a fake line or repaint a
terminal; bidi controls (U+202E and kin), which reorder what follows them on screen, are escaped too."""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # marks, embeddings, overrides, isolates
CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029{BIDI}]")
CONTROL_BUT_NEWLINE = re.compile(f"[\\x00-\\x09\\x0b-\\x1f\\x7f-\\x9f\\u2028\\u2029{BIDI}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int | None = 300) -> str:
    """`text` with control characters escaped (`\\x0a`), cut to `limit` characters (None: whole)."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return CONTROL.sub(_escape, text)


def failure(exc: BaseException) -> str:
    """An expected failure (a store or database that is down) in one printable line, for a warning without a
    traceback: the exception's first line (SQLAlchemy's add the statement and a link below it), else its type."""
    return printable(str(exc).partition("\n")[0] or type(exc).__name__)


class Every:
    """`due()` is true at most once per `seconds` (a warning logged at most once a minute, not per request)."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds = seconds
        self._last = -math.inf

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


def printable_lines(text: str) -> str:
    """`text` with every control character but the line break escaped (a message of several lines)."""
    return CONTROL_BUT_NEWLINE.sub(_escape, text)


class EscapingFormatter(logging.Formatter):
    """Escapes every control character of a record's message, and all but the line breaks of a traceback
    (whose lines Python itself writes)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging.Formatter's name)
        record.message = printable(record.message, limit=None)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging.Formatter's name)
        return printable_lines(super().formatException(ei))


def configure(level: str) -> None:
    """The gateway's logging: one stderr handler with the escaping formatter."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
