"""Reasoning items on OpenAI's Responses API (`POST /v1/responses`): an answer's thinking (an `anthropic`
backend's `thinking_blocks`, or a backend's bare `reasoning_content`) as `reasoning` output items, and a
`reasoning` input item sent back as the following assistant turn's `thinking_blocks`.

Each thinking block is one item, its text a `reasoning_text` part and the block itself in `encrypted_content`:
margin's own encoding (`ENCODING` then the block's JSON in URL-safe base64), not OpenAI's and not encrypted (the
block is the backend's signed output; a client learns nothing from it that `content` does not show, and cannot
change it unnoticed: Anthropic checks its signature). It is always included, as OpenAI's API populates it by
default: a client that sends the output back (`store: false`) needs it, whether or not it asked for it with
`include: ["reasoning.encrypted_content"]`. An answer with OpenRouter's `reasoning_details` and no
thinking blocks (an `openai` backend's) has them in its reasoning item's `encrypted_content` in margin's other
encoding (`DETAILS_ENCODING`, a stream's pieces merged): sent back, they are the next assistant message's
`reasoning_details`, which the upstream needs to continue its reasoning (a tool loop with a thinking model). A
reasoning item whose `encrypted_content` is neither (another provider's, or none) is left out of the chat
request: there is nothing a backend could check it against."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from margin.protocol import (
    MAX_MESSAGES,
    MAX_REASONING_DETAILS,
    MAX_SIGNATURE_CHARS,
    MAX_THINKING_CHARS,
    ReasoningDetail,
    RedactedThinkingBlock,
    ThinkingBlock,
)
from margin.thinking import REASONING_DETAILS, reasoning_of

ENCODING = "margin.thinking.v1:"
# the longest encoding a block margin accepts may have: its text and signature at 4 bytes a character, base64
MAX_ENCRYPTED_CHARS = len(ENCODING) + (4 * (MAX_THINKING_CHARS + MAX_SIGNATURE_CHARS) + 64) * 4 // 3 + 4
BLOCK_KEYS = {"thinking": ("type", "thinking", "signature"), "redacted_thinking": ("type", "data")}
_BLOCK: TypeAdapter[ThinkingBlock | RedactedThinkingBlock] = TypeAdapter(
    Annotated[ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")]
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ReasoningText(_Strict):
    type: Literal["reasoning_text"]
    text: str


class SummaryText(_Strict):
    type: Literal["summary_text"]
    text: str


class ReasoningItem(_Strict):
    """A `reasoning` input item as an answer gave it (or as another provider's answer did)."""

    type: Literal["reasoning"]
    id: Annotated[str, Field(max_length=256)] | None = None
    summary: Annotated[list[SummaryText], Field(max_length=MAX_MESSAGES)] = []
    content: Annotated[list[ReasoningText], Field(max_length=MAX_MESSAGES)] | None = None
    encrypted_content: Annotated[str, Field(max_length=MAX_ENCRYPTED_CHARS)] | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def block(self) -> dict[str, Any] | None:
        """The thinking block it holds in margin's encoding (validated and bounded as a chat's `thinking_blocks`
        entry), or None: another provider's item, or none at all."""
        return decode(self.encrypted_content) if self.encrypted_content is not None else None

    def details(self) -> list[dict[str, Any]] | None:
        """The OpenRouter `reasoning_details` it holds in margin's encoding (`DETAILS_ENCODING`), or None."""
        return decode_details(self.encrypted_content) if self.encrypted_content is not None else None


def encode(block: dict[str, Any]) -> str | None:
    """A thinking block as margin's `encrypted_content` (only the block's own keys), or None if it is not one."""
    keys = BLOCK_KEYS.get(block.get("type"))  # type: ignore[arg-type]
    if keys is None or not all(isinstance(block.get(key), str) for key in keys):
        return None
    own = {key: block[key] for key in keys}
    return ENCODING + base64.urlsafe_b64encode(orjson.dumps(own)).decode()


DETAILS_ENCODING = "margin.details.v1:"
_DETAILS: TypeAdapter[list[ReasoningDetail]] = TypeAdapter(
    Annotated[list[ReasoningDetail], Field(min_length=1, max_length=MAX_REASONING_DETAILS)]
)
PIECE_KEYS = ("text", "summary", "data")  # a streamed entry's pieces, joined; its other keys: the last one's


class DetailsMerge:
    """A stream's OpenRouter `reasoning_details` pieces merged into entries: the pieces of one entry (consecutive,
    of one type and `index`) joined; its other keys: the last piece's. A piece's text is kept in a list and joined
    when read (`entries`), so n pieces cost their length, not n times it. Past `MAX_REASONING_DETAILS` entries, or
    past `MAX_ENCRYPTED_CHARS` characters of text (their encoding would be longer still: `encode_details` gives
    None), none is kept (`dropped`): a client could not send them back."""

    __slots__ = ("dropped", "merged", "pieces", "size")

    def __init__(self) -> None:
        self.merged: list[dict[str, Any]] = []
        self.pieces: list[dict[str, list[str]]] = []  # each entry's texts (`PIECE_KEYS`) so far, not yet joined
        self.size = 0  # the characters of text so far
        self.dropped = False

    def add(self, entry: Any) -> None:
        """One streamed piece (anything but an object ignored)."""
        if self.dropped or type(entry) is not dict:
            return
        last = self.merged[-1] if self.merged else None
        if last is None or (last.get("type"), last.get("index")) != (entry.get("type"), entry.get("index")):
            self.merged.append(dict(entry))
            self.pieces.append({})
            self._count(sum(len(value) for key, value in entry.items() if key in PIECE_KEYS and isinstance(value, str)))
            return
        pieces = self.pieces[-1]
        for key, value in entry.items():
            if key in PIECE_KEYS and isinstance(value, str) and (key in pieces or isinstance(last.get(key), str)):
                pieces.setdefault(key, [last[key]]).append(value)
                self._count(len(value))
            elif value is not None:
                last[key] = value
                pieces.pop(key, None)

    def _count(self, chars: int) -> None:
        self.size += chars
        if self.size > MAX_ENCRYPTED_CHARS or len(self.merged) > MAX_REASONING_DETAILS:
            self.merged, self.pieces, self.dropped = [], [], True

    def entries(self) -> list[dict[str, Any]]:
        """The entries so far, their texts joined (each text once: joined, it is one piece)."""
        for entry, pieces in zip(self.merged, self.pieces, strict=True):
            for key, texts in pieces.items():
                entry[key] = texts[0] if len(texts) == 1 else "".join(texts)
                texts[:] = [entry[key]]
        return self.merged


def encode_details(details: Any) -> str | None:
    """OpenRouter's `reasoning_details` of an answer as margin's `encrypted_content` (`DETAILS_ENCODING` then their
    JSON in URL-safe base64), for a client to send back with the reasoning item; None without any, or where they
    would be longer than an `encrypted_content` margin accepts back."""
    if type(details) is not list or not details or not all(type(entry) is dict for entry in details):
        return None
    try:
        data = orjson.dumps(details)
    except orjson.JSONEncodeError:  # an upstream's entry nested past what orjson writes (255 levels)
        return None
    encoded = DETAILS_ENCODING + base64.urlsafe_b64encode(data).decode()
    return encoded if len(encoded) <= MAX_ENCRYPTED_CHARS else None


def decode_details(encrypted: str) -> list[dict[str, Any]] | None:
    """The `reasoning_details` an `encrypted_content` in `DETAILS_ENCODING` holds (validated and bounded as a chat
    message's), or None."""
    if not encrypted.startswith(DETAILS_ENCODING):
        return None
    try:
        details = _DETAILS.validate_json(base64.urlsafe_b64decode(encrypted[len(DETAILS_ENCODING) :].encode()))
    except (ValueError, binascii.Error, ValidationError):
        return None
    return [entry.model_dump(exclude_unset=True) for entry in details]


def decode(encrypted: str) -> dict[str, Any] | None:
    if not encrypted.startswith(ENCODING):
        return None
    try:
        block = _BLOCK.validate_json(base64.urlsafe_b64decode(encrypted[len(ENCODING) :].encode()))
    except (ValueError, binascii.Error, ValidationError):
        return None
    return block.model_dump(exclude_none=True)


def reasoning_item(
    item_id: str, text: str | None, encrypted: str | None, status: str, summarize: bool = False
) -> dict[str, Any]:
    """A `reasoning` output item (`text`: its `reasoning_text`, none for a redacted block; `summarize`: the
    request asked for `reasoning.summary`, so the text is its `summary_text` part too)."""
    content = [{"type": "reasoning_text", "text": text}] if text is not None else []
    return {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [{"type": "summary_text", "text": text}] if summarize and text is not None else [],
        "content": content,
        "encrypted_content": encrypted,
    }


def block_item(block: Any, item_id: str, status: str, summarize: bool) -> dict[str, Any] | None:
    """A chat answer's thinking block as a reasoning item (None if it is not one)."""
    if not isinstance(block, dict) or (encrypted := encode(block)) is None:
        return None
    text = block["thinking"] if block["type"] == "thinking" else None
    return reasoning_item(item_id, text, encrypted, status, summarize)


def output_items(message: dict[str, Any], ids: str, status: str, summarize: bool = False) -> list[dict[str, Any]]:
    """A chat answer's thinking as reasoning items: one per thinking block, else one for its `reasoning_content`
    or `reasoning` (`margin.thinking.reasoning_of`; a backend that gives no blocks: nothing to send back, so no
    `encrypted_content`); `summarize`: each with its text as its summary too."""
    blocks = message.get("thinking_blocks")
    items: list[dict[str, Any]] = []
    for block in blocks if isinstance(blocks, list) else []:
        if (item := block_item(block, f"rs_{ids}_{len(items)}", status, summarize)) is not None:
            items.append(item)
    if items:
        return items
    text, details = reasoning_of(message), encode_details(message.get(REASONING_DETAILS))
    if text or details:  # `reasoning_details` (OpenRouter's), for the client to send back: `encrypted_content`
        items.append(reasoning_item(f"rs_{ids}_0", text, details, status, summarize))
    return items


class ReasoningEvents:
    """The reasoning items of a Responses stream (mixed into `margin.api.responses_out.StreamEvents`): an item is
    opened by the first `delta.reasoning_content` piece (`response.reasoning_text.delta` for each), and closed by
    its `delta.thinking_blocks` entry (its `encrypted_content`), or when another kind of output starts. With
    `summarize`, the text is the item's one `summary_text` part too, streamed first in each step as OpenAI orders
    its summary events (`response.reasoning_summary_part.added`, a `response.reasoning_summary_text.delta` per
    piece, `.text.done`, `.part.done`), all before the item's `response.output_item.done`."""

    ids: str
    summarize: bool
    items: list[dict[str, Any]]
    reasoning: dict[str, Any] | None  # the open reasoning item
    reasoning_texts: list[str]
    details: DetailsMerge  # the stream's `reasoning_details` so far, merged (OpenRouter's)

    def event(self, kind: str, **fields: Any) -> bytes:
        raise NotImplementedError

    def _close_others(self) -> bytes:
        raise NotImplementedError

    def _item_status(self) -> str:
        raise NotImplementedError

    def _open_reasoning(self, item: dict[str, Any]) -> bytes:
        out = self._close_reasoning() + self._close_others()
        self.items.append(item)
        return out + self.event("response.output_item.added", output_index=len(self.items) - 1, item=copy_item(item))

    def _reasoning_delta(self, text: str) -> bytes:
        out = b""
        if (item := self.reasoning) is None:
            number = sum(item["type"] == "reasoning" for item in self.items)
            item = reasoning_item(f"rs_{self.ids}_{number}", None, None, "in_progress")
            out = self._open_reasoning(item)
            self.reasoning, self.reasoning_texts = item, []
            part = {"type": "reasoning_text", "text": ""}
            out += self._summary("added", item, "")
            out += self.event(
                "response.content_part.added", item_id=item["id"], output_index=len(self.items) - 1, content_index=0,
                part=part,
            )  # fmt: skip
        self.reasoning_texts.append(text)
        index = self.items.index(item)
        return (
            out
            + self._summary("delta", item, text)
            + self.event(
                "response.reasoning_text.delta", item_id=item["id"], output_index=index, content_index=0, delta=text
            )
        )  # fmt: skip

    def _summary(self, step: str, item: dict[str, Any], text: str) -> bytes:
        """One step of the item's summary events (`added`, `delta`, `done`: text then part), if asked for."""
        if not self.summarize:
            return b""
        fields: dict[str, Any] = {"item_id": item["id"], "output_index": self.items.index(item), "summary_index": 0}
        part = {"type": "summary_text", "text": text}
        if step == "added":
            return self.event("response.reasoning_summary_part.added", **fields, part=part)
        if step == "delta":
            return self.event("response.reasoning_summary_text.delta", **fields, delta=text)
        return self.event("response.reasoning_summary_text.done", **fields, text=text) + self.event(
            "response.reasoning_summary_part.done", **fields, part=part
        )

    def _thinking_block(self, block: Any) -> bytes:
        """A whole thinking block: it closes the open item (or is an item of its own: a redacted block)."""
        encrypted = encode(block) if isinstance(block, dict) else None
        if encrypted is None:
            return b""
        if self.reasoning is not None and block["type"] == "thinking":
            self.reasoning["encrypted_content"] = encrypted
            return self._close_reasoning()
        number = sum(item["type"] == "reasoning" for item in self.items)
        text = block["thinking"] if block["type"] == "thinking" else None
        item = reasoning_item(f"rs_{self.ids}_{number}", None, None, "in_progress")
        out = self._open_reasoning(item)
        item.update(reasoning_item(item["id"], text, encrypted, self._item_status(), self.summarize))
        if text is not None:
            out += (
                self._summary("added", item, "")
                + self._summary("delta", item, text)
                + self._summary("done", item, text)
            )
        return out + self.event("response.output_item.done", output_index=len(self.items) - 1, item=copy_item(item))

    def _close_reasoning(self) -> bytes:
        item = self.reasoning
        if item is None:
            return b""
        self.reasoning = None
        index, text = self.items.index(item), "".join(self.reasoning_texts)
        part = {"type": "reasoning_text", "text": text}
        item["content"], item["status"] = [part], self._item_status()
        if item["encrypted_content"] is None:  # no thinking block: the `reasoning_details` so far, if any
            item["encrypted_content"] = encode_details(self.details.entries())
        if self.summarize:
            item["summary"] = [{"type": "summary_text", "text": text}]
        fields: dict[str, Any] = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return (
            self._summary("done", item, text)
            + self.event("response.reasoning_text.done", **fields, text=text)
            + self.event("response.content_part.done", **fields, part=part)
            + self.event("response.output_item.done", output_index=index, item=copy_item(item))
        )

    def _details(self, entries: list[Any]) -> None:
        """A delta's `reasoning_details` pieces, merged into the stream's (`DetailsMerge`: past its bounds, none is
        kept, as a client could not send them back)."""
        for entry in entries:
            self.details.add(entry)

    def _last_details(self) -> None:
        """At the stream's end: the last reasoning item that holds no thinking block takes the whole
        `reasoning_details` (pieces, a signature, may come after its text closed it)."""
        found = [item for item in self.items if item["type"] == "reasoning" and not _block_encoded(item)]
        if found and (details := self.details.entries()):
            found[-1]["encrypted_content"] = encode_details(details)


def _block_encoded(item: dict[str, Any]) -> bool:
    encrypted = item.get("encrypted_content")
    return isinstance(encrypted, str) and encrypted.startswith(ENCODING)


def copy_item(item: dict[str, Any]) -> dict[str, Any]:
    copied = {**item, "content": [dict(part) for part in item["content"]]} if "content" in item else dict(item)
    if "summary" in item:
        copied["summary"] = [dict(part) for part in item["summary"]]
    return copied
