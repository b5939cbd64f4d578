"""A run's records file: one JSON answer a line (a line cut by an interruption is skipped and asked again); and
its run.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from margin.errors import ConfigError
from margin.userfiles import read_bytes


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut by an interruption: that answer is asked again
        if isinstance(record, dict):
            records.append(record)
    return records


def read_meta(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's run.json (None: there is none). One that is not a JSON object (cut short, edited, another
    tool's file) is a ConfigError naming it; it was a traceback."""
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    try:
        meta = orjson.loads(read_bytes(path, "run file"))
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not a run's record (not JSON: {exc}); use another folder") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("experiment"), dict):
        raise ConfigError(f"{path} is not a run's record (no experiment in it); use another folder")
    return meta
