"""A run's records file: one JSON answer a line (a line cut by an interruption is skipped and asked again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # a line cut by an interruption: that answer is asked again
    return records
