"""Cells of the files margin writes for spreadsheets (`margin report --format csv`, the FOCUS export): no
terminal, no rich, so the FOCUS export loads neither."""

from __future__ import annotations

import re
from typing import Any

# What a spreadsheet reads as the start of a formula (OWASP's list, and the full-width forms some read too)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def spreadsheet_text(value: Any) -> Any:
    """A CSV cell no spreadsheet runs: a string it would read as a formula (`=HYPERLINK(…)`, `+…`, `-…`, `@…`,
    one led by a tab or CR) gets a leading `'`, so it shows as the text it is; numbers, and strings that are
    numbers (money as decimal strings, `-0.5`), are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not NUMBER.fullmatch(value):
        return "'" + value
    return value
