"""Batch input files: the upload (multipart/form-data, read with a limit) and the validation of each line.

An upload is refused whole only for what makes it no batch file at all: larger than `batches.max_file_bytes`
(413, counted as the bytes arrive), more than `max_lines` requests (non-blank lines) or a request line longer
than `max_line_bytes` (400; both checked before any line is parsed), not UTF-8, or empty. Blank lines, anywhere,
are no requests: never counted, parsed or reported. Everything else is judged per line when a job is created
from the file: a bad line becomes an entry of the job's `errors` and of its error file, the good lines run, and
every non-blank input line ends in exactly one of the two output files. A UTF-8 byte-order mark at the start of
a line is not part of it.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any

import orjson
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from margin import jsonload, messages_chat, responses_chat
from margin.batches import expiry
from margin.errors import InvalidRequest, MarginError, PayloadTooLarge
from margin.parsing import parse_request
from margin.protocol import Endpoint
from margin.specs import BatchConfig

ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
    "/v1/responses": Endpoint.RESPONSES,  # validated as the endpoint validates it (margin.responses_chat)
    "/v1/messages": Endpoint.MESSAGES,  # idem (margin.messages_chat)
}
# a line's body as the chat request it is run as (a Responses line as a stateless one: batch lines are not stored)
TRANSLATED: dict[Endpoint, Callable[[Any], tuple[Any, Any, Any]]] = {
    Endpoint.RESPONSES: responses_chat.parse,
    Endpoint.MESSAGES: messages_chat.parse,
}
FORM_ENVELOPE = 64 * 1024  # room for the form's own fields and boundaries around the file
MAX_CUSTOM_ID = 256
# a file of nothing but these is empty: whitespace and byte-order marks (each line's is dropped: `validate`); a
# stray byte of a mark counts too (such a file is no UTF-8 either). One C pass, no copy of a file that starts well
BLANK = b" \t\n\r\x0b\x0c" + codecs.BOM_UTF8
CUSTOM_ID = re.compile(r"[^\x00-\x1f\x7f-\x9f]+")  # no C0 or C1 control character, nor DEL (fullmatch)
# a byte that is no whitespace (`bytes.strip`'s): the next line that is not blank starts on its line. The regex
# engine skips blank lines in C (~8 ms a MB), so a file of one request and millions of newlines is never split
# into a list of them (50 MB of newlines: ~2 GB of empty lines)
NOT_BLANK = re.compile(rb"[^ \t\r\n\x0b\x0c]")


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    purpose: str
    content: bytes  # not yet checked: `check_content` scans it (on a worker thread: up to max_file_bytes)
    expires_s: int | None = None  # `expires_after[seconds]` (margin.batches.expiry); None: not sent


async def _bounded(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"upload of {declared} bytes is over the limit of {limit} bytes (batches.max_file_bytes)")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"upload is over the limit of {limit} bytes (batches.max_file_bytes)")
        yield chunk


def filled_lines(content: bytes) -> Iterator[tuple[int, bytes]]:
    """(number, line) of each line that is not blank, numbered as lines of the file (from 1), in order: Python
    work per line yielded only. A line of a byte-order mark and blanks is yielded too (the C scan stops on the
    mark's bytes): `check_content` counts it against `max_lines`, so the Python work stays bounded by it (a file
    of 12M such lines took ~30 s a check when they were dropped uncounted), and `validate` skips it."""
    number, counted, at = 1, 0, 0
    while (found := NOT_BLANK.search(content, at)) is not None:
        start = content.rfind(b"\n", 0, found.start()) + 1
        end = content.find(b"\n", found.start())
        end = len(content) if end < 0 else end
        number += content.count(b"\n", counted, start)
        counted, at = start, end + 1
        yield number, content[start:end]


def check_content(content: bytes, limits: BatchConfig) -> int:
    """The number of requests (non-blank lines, a line of a byte-order mark alone among them), after the limits
    that make a file no batch file at all: at most `max_lines` of them are looked at (a line's length: no parse),
    whatever the file's blank lines."""
    if not content.lstrip(BLANK):
        raise InvalidRequest("the file is empty", param="file", code="empty_file")
    lines = 0
    for number, line in filled_lines(content):
        lines += 1
        if lines > limits.max_lines:  # a line of a byte-order mark alone counts too (`filled_lines`)
            raise InvalidRequest(
                f"the file has more than {limits.max_lines} requests (non-blank lines; batches.max_lines)",
                param="file",
                code="too_many_lines",
            )
        if len(line) > limits.max_line_bytes:
            raise InvalidRequest(
                f"line {number} of {len(line)} bytes is over the limit of {limits.max_line_bytes} "
                "(batches.max_line_bytes)",
                param="file",
                code="line_too_long",
            )
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the file is not UTF-8 text (byte {exc.start})", param="file") from exc
    return lines


class UploadParser(MultiPartParser):
    """Starlette's multipart parser, which also takes a part named only by RFC 5987's `filename*=UTF-8''…` (some
    HTTP clients send no plain `filename` for a name outside ASCII) as the file it is: starlette's parser reads a
    part as a file only when its Content-Disposition holds `filename`, and its header parser drops `filename*`,
    so the upload was read as a plain field (a 400 `file`, or a part over the fields' 64 KiB)."""

    def on_headers_finished(self) -> None:
        part = self._current_part
        disposition = part.content_disposition or b""
        extended = b"filename*" in disposition.lower() and not re.search(rb"(?i);\s*filename\s*=", disposition)
        if extended:  # a placeholder `filename`, so that the part is a file; its name is set below
            part.content_disposition = disposition + b'; filename=""'
        super().on_headers_finished()
        if extended and part.file is not None:
            header = Message()
            header["content-disposition"] = disposition.decode("latin-1")
            part.file.filename = header.get_filename() or ""  # RFC 2231/5987, as the standard library reads it


async def read_upload(request: Request, limits: BatchConfig) -> Upload:
    """The `file` and `purpose` fields of a multipart upload (after the caller was authenticated)."""
    parser = UploadParser(
        Headers(scope=request.scope),
        _bounded(request, limits.max_file_bytes + FORM_ENVELOPE),
        max_files=1,
        max_fields=8,
        max_part_size=64 * 1024,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"the upload is not a valid multipart form: {exc.message}") from exc
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise InvalidRequest("purpose must be `batch` (the only purpose this gateway stores)", param="purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("send the JSONL file in a `file` field", param="file")
        content = await upload.read(limits.max_file_bytes + 1)
        if len(content) > limits.max_file_bytes:
            raise PayloadTooLarge(f"the file is over the limit of {limits.max_file_bytes} bytes")
        filename = printable_name(upload.filename)
        expires_s = _expires_after(form)
    finally:
        await form.close()
    return Upload(filename, purpose, content, expires_s)


def _expires_after(form: Any) -> int | None:
    """`expires_after[anchor]` and `expires_after[seconds]`, the form fields OpenAI's SDKs send for
    `expires_after={"anchor": "created_at", "seconds": n}`; None when neither is sent."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if "expires_after" in form:
        raise InvalidRequest(
            "send expires_after as the fields expires_after[anchor] and expires_after[seconds]", param="expires_after"
        )
    if anchor is None and seconds is None:
        return None
    return expiry.seconds_of(anchor, seconds, "expires_after")


def printable_name(name: str | None) -> str:
    """An upload's filename as stored and shown: its first 256 characters, control characters as `_`
    (PostgreSQL's text cannot hold NUL: a filename with one was a 500)."""
    return "".join(c if c.isprintable() else "_" for c in (name or "batch.jsonl")[:256]) or "batch.jsonl"


@dataclass(frozen=True, slots=True)
class Line:
    line: int
    custom_id: str
    model: str
    body: bytes  # the request body, re-serialized JSON


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "custom_id": self.custom_id,
            "code": self.code,
            "message": self.message,
            "param": self.param,
        }


def _line(number: int, raw: bytes, endpoint: str, seen: dict[str, int]) -> Line | LineError:
    try:
        item = jsonload.loads(raw, max_depth=None)  # the body's depth is checked below, once the line has an id
    except orjson.JSONDecodeError as exc:
        return LineError(number, None, "invalid_json", f"line {number} is not valid JSON: {exc}")
    if not isinstance(item, dict):
        return LineError(number, None, "invalid_json", f"line {number} is not a JSON object")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID or not CUSTOM_ID.fullmatch(custom_id):
        # no control characters: PostgreSQL's text cannot hold NUL (asyncpg cut "a\x00b" to "a", and the
        # output's entry no longer matched its input line)
        message = f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters, none of them a control character"
        return LineError(number, None, "invalid_custom_id", message, "custom_id")
    if custom_id in seen:  # the message does not repeat the id: it is in the entry already (up to 256 characters)
        message = f"custom_id is already used on line {seen[custom_id]}"
        return LineError(number, custom_id, "duplicate_custom_id", message, "custom_id")
    seen[custom_id] = number
    if item.get("method") != "POST":
        return LineError(number, custom_id, "invalid_method", "method must be POST", "method")
    if item.get("url") != endpoint:
        return LineError(number, custom_id, "invalid_url", f"url must be the job's endpoint {endpoint}", "url")
    body = item.get("body")
    if not isinstance(body, dict):
        return LineError(number, custom_id, "invalid_body", "body must be a JSON object", "body")
    if jsonload.too_deep(raw, body):  # what the API's edge refuses with 400: margin could not write it back
        message = f"body nests deeper than {jsonload.MAX_DEPTH} levels of arrays and objects, the limit"
        return LineError(number, custom_id, "invalid_body", message, "body")
    if body.get("stream"):
        return LineError(number, custom_id, "unsupported_parameter", "streams are not run in batches", "body.stream")
    try:
        kind = ENDPOINTS[endpoint]
        request = TRANSLATED[kind](body)[2] if kind in TRANSLATED else parse_request(kind, body)
        stored = orjson.dumps(body)
    except MarginError as exc:
        return LineError(number, custom_id, exc.code or "invalid_request", exc.message, exc.param)
    return Line(number, custom_id, request.model, stored)


def validate(
    content: bytes, endpoint: str, served_as: Callable[[str], str | None]
) -> tuple[list[Line], list[LineError]]:
    """Every non-blank line as a runnable line or an error; all lines of a job must name one model (the
    first valid line's), as OpenAI requires. `served_as` names the model a name is served as (an alias: the
    model it stands for), None for an unknown name: lines naming one model by its aliases are one model."""
    lines: list[Line] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    model: str | None = None  # as the first valid line names it
    served: str | None = None  # the model that name is served as
    for number, text in filled_lines(content):  # blank lines are skipped (never split out)
        # the UTF-8 byte-order mark some editors write first, a line's first after `cat a.jsonl b.jsonl` (it
        # made the line an `invalid_json` error); no JSON starts with it, so no valid line changes
        raw = text.removeprefix(codecs.BOM_UTF8)
        if not raw.strip():
            continue  # a line of that mark alone: no request (counted against `max_lines` all the same)
        result = _line(number, raw, endpoint, seen)
        name = served_as(result.model) if isinstance(result, Line) else None
        if isinstance(result, Line) and name is None:
            result = LineError(number, result.custom_id, "model_not_found", f"unknown model {result.model!r}", "model")
        elif isinstance(result, Line) and served is not None and name != served:
            message = f"every line of a job names one model; this one names {result.model!r}, not {model!r}"
            result = LineError(number, result.custom_id, "model_mismatch", message, "model")
        if isinstance(result, Line):
            model, served = model or result.model, served or name
            lines.append(result)
        else:
            errors.append(result)
    return lines, errors
