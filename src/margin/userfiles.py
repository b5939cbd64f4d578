"""Reading files that a user hands a command (configs, workloads, experiments, calibrations, CSVs): every read
bounded, every decode checked, YAML parsed without alias bombs or unbounded nesting; what goes wrong is a
ConfigError that names the file, never a traceback.

YAML aliases are shared, not copied, by the parser: `[*a, *a, …]` nine deep is a few hundred bytes that
describe 9⁹ values, and whatever walks the result (validation, hashing, JSON) walks them all. The composed
document is measured first, counting each alias as the size of what it names; past `MAX_YAML_NODES` it is
refused. Nesting is measured on the parser's events (no recursion) before the recursive composer runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from margin.errors import ConfigError

MAX_FILE_BYTES = 64 * 1024 * 1024  # a config, workload or CSV larger than this is refused unread
MAX_YAML_NODES = 1_000_000  # scalars + containers once aliases are expanded
MAX_YAML_DEPTH = 64


def read_bytes(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """At most `limit` bytes of `path` (more: refused). Missing, a directory, unreadable: ConfigError."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is larger than {limit:,} bytes")
    return data


def read_text(path: Path, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """`read_bytes` decoded as UTF-8 (a BOM is dropped); other bytes are a ConfigError."""
    try:
        return read_bytes(path, what, limit).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from exc


def _check_depth(text: str, source: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"{source}: YAML nested deeper than {MAX_YAML_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _expanded_size(node: yaml.Node, sizes: dict[int, int], source: str) -> int:
    """Nodes of `node` with every alias expanded; memoised per node, so shared subtrees are measured once."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, source) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, source) + _expanded_size(v, sizes, source) for k, v in node.value)
    if size > MAX_YAML_NODES:
        raise ConfigError(f"{source}: YAML expands to more than {MAX_YAML_NODES:,} values (aliases counted)")
    sizes[id(node)] = size
    return size


def load_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load` of `text`, bounded in nesting and in expanded size; errors name `source`."""
    try:
        _check_depth(text, source)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        _expanded_size(node, {}, source)
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {yaml_problem(exc)}") from exc


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What the parser found and where (line, column), without the excerpt of the text PyYAML adds: that
    shows the text after `${VAR}` expansion, a `${PGPASSWORD}` in a URL included."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)
    parts = []
    for what, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if what:
            parts.append(what if mark is None else f"{what} (line {mark.line + 1}, column {mark.column + 1})")
    return "; ".join(parts) or "unreadable"


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file a user passes: `read_text` then `load_yaml`."""
    return load_yaml(read_text(path, what), f"{what} {path}")


def validation_message(exc: ValidationError, limit: int = 5) -> str:
    """A pydantic error as `field: message` lines (the first `limit`), without pydantic's links."""
    errors = exc.errors()
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"… and {len(errors) - limit} more")
    return "; ".join(lines)
