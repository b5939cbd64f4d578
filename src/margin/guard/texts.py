"""Where the text is in an OpenAI request or answer, so guards can read and rewrite it in place.

Requests are handled as the caller's JSON (`ctx.raw`), which is what upstreams receive, and re-parsed after a
rewrite. Every string that leaves for an upstream is visited, not only the conversation: message `name`,
tool-call and function-call arguments (decoded first, so `\\u0040` escapes hide nothing, and re-encoded only
when something changed), tool and function definitions, `response_format` schemas, `metadata`, `user`, `stop`,
`suffix` and any vendor field (a content part's too). Left alone, because they are structure rather than content
or because a placeholder would break them: field names (dict keys), `model`, `role`, `type`, ids, function and
schema `name`s, JSON-schema `format`/`pattern`/`$ref`/`required`, and the media of non-text content parts (an
image's, audio's or file's url, data and ids).

Answers are handled as the OpenAI payload: `choices[].message.content` and `reasoning_content`, tool-call
arguments, `choices[].text`, stream deltas and (on request: `rewrite_answer(thinking=…)`) thinking blocks' text
and the text of OpenRouter's `reasoning_details` entries (`reasoning.text`, `reasoning.summary`; never a
`signature` or a `reasoning.encrypted` entry's `data`). In a request, those entries' `text` and `summary` are
read as fields are (a `signature` is structure: kept as it is)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from margin import jsonload
from margin.thinking import ANTHROPIC_ONLY, REASONING_DETAILS, REASONING_KEYS, detail_texts, repeats_reasoning
from margin.types import choices_of

Visit = Callable[[str, str], str]  # (where, text) -> text; where is a message role, or FIELD
Rewrite = Callable[[str], str]
FIELD = "field"  # a string outside the conversation's content (name, arguments, metadata, definitions…)
UNTRUSTED_ROLES = frozenset({"user", "tool", "function"})  # where injected instructions come from
_STRUCTURAL = frozenset(
    {
        "model", "role", "type", "id", "tool_call_id", "name", "tool_choice", "format", "pattern", "$ref",
        "$schema", "$id", "$anchor", "required", "url", "detail", "data", "file_data", "file_id", "voice",
        "encoding_format", "modalities", "reasoning_effort", "service_tier", "verbosity", "prompt_cache_retention",
        "prompt_cache_options",
    }
)  # fmt: skip
"""Keys whose string values are structure, not content: never rewritten by the generic walk."""
# and in an input item (a compaction's, `POST /v1/responses/compact`): a call's id, and the opaque content of a
# compaction or reasoning item (the upstream's own encryption: a rewritten one is refused there)
# content parts whose value under their own type is a medium (a string there is an address or data, not text)
_MEDIA_PARTS = frozenset(
    {
        "image_url", "input_image", "image", "image_embeds", "input_audio", "audio_url", "video_url", "file",
        "input_file", "document_url",
    }
)  # fmt: skip
_ITEM_STRUCTURAL = _STRUCTURAL | {"call_id", "encrypted_content"}
# and in an assistant message's `reasoning_details` (OpenRouter's, sent back): an entry's signature (an encrypted
# entry's `data` is structural already)
_DETAILS_STRUCTURAL = _STRUCTURAL | {"signature"}
_CONVERSATION = ("messages", "prompt", "input")


def _all_strings(value: Any, visit: Visit) -> Any:
    """Every string value inside `value` (dict keys excepted); the same object back when nothing changed."""
    if isinstance(value, str):
        return visit(FIELD, value)
    if isinstance(value, dict):
        new = {k: _all_strings(v, visit) for k, v in value.items()}
        return value if all(new[k] is v for k, v in value.items()) else new
    if isinstance(value, list):
        items = [_all_strings(v, visit) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _generic(value: Any, visit: Visit, structural: frozenset[str] = _STRUCTURAL) -> Any:
    """Like `_all_strings`, but the values of structural keys (`structural`) are kept as they are."""
    if isinstance(value, str):
        return visit(FIELD, value)
    if isinstance(value, dict):
        new = {k: v if k in structural else _generic(v, visit, structural) for k, v in value.items()}
        return value if all(new[k] is v for k, v in value.items()) else new
    if isinstance(value, list):
        items = [_generic(v, visit, structural) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _arguments(value: Any, visit: Visit) -> Any:
    """Tool-call arguments: a JSON string is decoded, its strings visited, and re-encoded if any changed."""
    if not isinstance(value, str):
        return _all_strings(value, visit)
    try:
        decoded = jsonload.loads(value)  # nested past jsonload.MAX_DEPTH: visited as one text, like non-JSON
    except orjson.JSONDecodeError:
        return visit(FIELD, value)
    if isinstance(decoded, str):
        new_text = visit(FIELD, decoded)
        return value if new_text is decoded else orjson.dumps(new_text).decode()
    new = _all_strings(decoded, visit)
    return value if new is decoded else orjson.dumps(new).decode()


def _calls(value: Any, visit: Visit) -> Any:
    """`tool_calls` (a list) or `function_call` (one): only the arguments are content."""
    if isinstance(value, list):
        items = [_calls(v, visit) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if not isinstance(value, dict):
        return value
    function = value.get("function") if "function" in value else value
    if not isinstance(function, dict) or "arguments" not in function:
        return value
    arguments = _arguments(function["arguments"], visit)
    if arguments is function["arguments"]:
        return value
    new_function = {**function, "arguments": arguments}
    return {**value, "function": new_function} if "function" in value else new_function


def _content(role: str, content: Any, visit: Visit) -> Any:
    if isinstance(content, str):
        return visit(role, content)
    if not isinstance(content, list):
        return content
    parts = [_part(role, part, visit) for part in content]
    return content if all(a is b for a, b in zip(parts, content, strict=True)) else parts


def _part(role: str, part: Any, visit: Visit) -> Any:
    """A content part: its `text` is content; a `refusal` and every other string in it are fields (a vendor key
    sent on, a file's `filename`: before, only `text` and `refusal` were read, and an e-mail in any other key of a
    part went upstream under `pii: block`). An image's, audio's or file's data, url and ids are structure."""
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    media = kind in _MEDIA_PARTS
    new = {key: _part_value(role, key, value, visit, media and key == kind) for key, value in part.items()}
    return part if all(new[k] is part[k] for k in part) else new


def _part_value(role: str, key: str, value: Any, visit: Visit, payload: bool) -> Any:
    """`payload`: the value under a media part's own type (`_MEDIA_PARTS`): a string there is the medium itself
    (Mistral's `"image_url": "data:…"`, vLLM's `image_embeds`), never scanned as text; any other part's is (a
    `refusal` part's refusal, an unknown type's value)."""
    if key == "text" and isinstance(value, str):
        return visit(role, value)
    if key in _STRUCTURAL or (payload and key != "text" and isinstance(value, str)):
        return value
    return _generic(value, visit)


def _message(message: Any, visit: Visit) -> Any:
    if not isinstance(message, dict):
        return message
    role = str(message.get("role", ""))
    new: dict[str, Any] = {}
    for key, value in message.items():
        if key in ("role", "tool_call_id", *ANTHROPIC_ONLY):  # thinking: the backend's own signed output, sent
            new[key] = value  # back unchanged (a rewritten block fails its signature; a forged one is refused)
        elif key == "content":
            new[key] = _content(role, value, visit)
        elif key in ("tool_calls", "function_call"):
            new[key] = _calls(value, visit)
        elif key == "name":
            new[key] = visit(FIELD, value) if isinstance(value, str) else value
        elif key == REASONING_DETAILS:
            new[key] = _generic(value, visit, _DETAILS_STRUCTURAL)
        else:
            new[key] = _generic(value, visit)
    return message if all(new[k] is v for k, v in message.items()) else new


def _input_item(value: Any, visit: Visit) -> Any:
    if isinstance(value, str):
        return visit("user", value)
    return _generic(value, visit, _ITEM_STRUCTURAL) if isinstance(value, dict) else value


def _prompt(value: Any, visit: Visit) -> Any:
    """A prompt or input: texts, token ids, or (a compaction's) items, whose strings are read as fields are."""
    if isinstance(value, str):
        return visit("user", value)
    if isinstance(value, list):
        items = [_input_item(v, visit) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def walk_request(raw: dict[str, Any], visit: Visit) -> dict[str, Any]:
    """The request with every string that leaves for an upstream passed through `visit(where, text)`;
    `raw` itself when nothing changed (structure and other fields are kept)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "messages" and isinstance(value, list):
            messages = [_message(m, visit) for m in value]
            out[key] = value if all(a is b for a, b in zip(messages, value, strict=True)) else messages
        elif key in ("prompt", "input"):
            out[key] = _prompt(value, visit)
        elif key == "metadata":
            out[key] = _all_strings(value, visit)
        elif key in _STRUCTURAL:
            out[key] = value
        else:
            out[key] = _generic(value, visit)
    return raw if all(out[k] is v for k, v in raw.items()) else out


def request_texts(raw: dict[str, Any], *, everything: bool = True) -> list[tuple[str, str]]:
    """(where, text) for the strings the guard reads: all of them, or (`everything=False`) only the
    conversation's content (messages, prompt, input) as the prompt log keeps it."""
    found: list[tuple[str, str]] = []

    def collect(where: str, text: str) -> str:
        if everything or where != FIELD:
            found.append((where, text))
        return text

    walk_request(raw if everything else {k: raw[k] for k in _CONVERSATION if k in raw}, collect)
    return found


def rewrite_request(raw: dict[str, Any], rewrite: Rewrite) -> dict[str, Any]:
    """A copy of the request with every string that leaves for an upstream passed through `rewrite`."""
    return walk_request(raw, lambda _where, text: rewrite(text))


# a message's or delta's text: its answer, its thinking (`reasoning_content`, or OpenRouter's and Ollama's
# `reasoning`: both rewritten where an upstream sends both, since both reach a chat client)
_ANSWER_KEYS = ("content", *REASONING_KEYS)


def _answer_holders(payload: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    for choice in choices_of(payload):
        if not isinstance(choice, dict):
            continue
        for holder in (choice.get("message"), choice.get("delta")):
            if isinstance(holder, dict):
                yield from ((holder, key) for key in _ANSWER_KEYS if isinstance(holder.get(key), str))
        if isinstance(choice.get("text"), str):
            yield choice, "text"


def thinking_blocks(holder: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's (or delta's) `thinking` blocks with a text. A `redacted_thinking` block's `data` is opaque
    (encrypted by the backend) and a signature is not text: neither is read."""
    blocks = holder.get("thinking_blocks")
    if not isinstance(blocks, list):
        return []
    return [b for b in blocks if isinstance(b, dict) and b.get("type") == "thinking" and _has_text(b)]


def _has_text(block: dict[str, Any]) -> bool:
    return isinstance(block.get("thinking"), str)


def _answer_thinking(payload: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, bool]]:
    """Each thinking block and each `reasoning_details` entry with a text of a whole answer: (the block or entry,
    the key of its text, whether its text is new). Not new: the message's reasoning is the blocks' (or the
    entries') texts joined (an `anthropic` backend's answer, OpenRouter's), its values counted there already."""
    for choice in choices_of(payload):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        for texts in ([(block, "thinking") for block in thinking_blocks(message)], detail_texts(message)):
            repeated = bool(texts) and repeats_reasoning(message, [entry[key] for entry, key in texts])
            yield from ((entry, key, not repeated) for entry, key in texts)


def _answer_calls(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for choice in choices_of(payload):
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            for key in ("tool_calls", "function_call"):
                if message.get(key):
                    yield message


def rewrite_answer(
    payload: dict[str, Any], rewrite: Rewrite, thinking: Callable[[str, bool], str] | None = None
) -> bool:
    """Rewrite a whole answer's (or a stream chunk's) text in place, its reasoning and the tool-call arguments of
    whole answers included; True when anything changed. With `thinking`, each thinking block's text too, and
    each `reasoning_details` entry's, through `thinking(text, new)` (`new`: not a repeat of the message's
    reasoning); a block's or entry's signature is kept, so a rewritten one no longer matches it."""
    changed = False
    if thinking is not None:
        for block, key, fresh in _answer_thinking(payload):
            text = thinking(block[key], fresh)
            changed = changed or text != block[key]
            block[key] = text
    for holder, key in _answer_holders(payload):
        new = rewrite(holder[key])
        if new != holder[key]:
            holder[key] = new
            changed = True
    for message in _answer_calls(payload):
        for key in ("tool_calls", "function_call"):
            new_calls = _calls(message.get(key), lambda _where, text: rewrite(text))
            if new_calls is not message.get(key):
                message[key] = new_calls
                changed = True
    return changed


def _repeated(holder: dict[str, Any], key: str) -> bool:
    """`reasoning` where `reasoning_content` holds the same text (counted once, as `reasoning_of` reads it). Two
    that differ are both read: the client gets both (an empty `reasoning_content` hid a `reasoning`'s text)."""
    return key == "reasoning" and holder.get("reasoning_content") == holder.get("reasoning")


def answer_text(payload: dict[str, Any]) -> str:
    """An answer's text for counting what it holds: content, reasoning, text, tool-call arguments and the texts of
    thinking blocks and `reasoning_details` entries that do not repeat the reasoning."""
    parts = [holder[key] for holder, key in _answer_holders(payload) if not _repeated(holder, key)]
    parts.extend(block[key] for block, key, new in _answer_thinking(payload) if new)

    def collect(_where: str, text: str) -> str:
        parts.append(text)
        return text

    for message in _answer_calls(payload):
        for key in ("tool_calls", "function_call"):
            _calls(message.get(key), collect)
    return "\n".join(parts)
