"""Suites by name: `builtin:NAME` (generated or shipped) or a .jsonl(.gz) file."""

from __future__ import annotations

from pathlib import Path

from margin.errors import ConfigError
from margin.evals.generated import smol_basics
from margin.evals.suites import Item, humaneval_items, load_jsonl, mtbench_items


def load_suite(spec: str, *, seed: int = 0, limit: int | None = None) -> list[Item]:
    """`builtin:NAME` or a path to a .jsonl(.gz); `limit` keeps the first N items."""
    builtins = {"smol-basics": lambda: smol_basics(seed), "humaneval": humaneval_items, "mtbench": mtbench_items}
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in builtins:
            raise ConfigError(f"unknown builtin suite {name!r}; known: {', '.join(sorted(builtins))}")
        items = builtins[name]()
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"suite file {spec} {'is not a file' if path.exists() else 'does not exist'}")
        items = load_jsonl(path)
        if not items:  # a run of no items wrote an empty report, exit 0, and a gate that named no variant
            raise ConfigError(f"suite file {spec} holds no items")
    return items[:limit] if limit else items
