"""Batch input files against a running `margin serve` over real HTTP, the `openai` SDK as client: blank lines are
no requests (never counted toward `batches.max_lines`, anywhere in the file), and a part named only by RFC 5987's
`filename*=` is the file. Before, a file of `max_lines` requests and a final blank line or two was refused 400
`too_many_lines`, and a part with `filename*=UTF-8''…` alone was read as a plain form field (400 `file`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from margin.ledger import db
from tests.batches.helpers import FINAL, entries, jsonl, line
from tests.governance.conftest import served_with_admin

MAX_LINES = 3
CONFIG = {
    "backends": {"fake": {"kind": "fake", "output_tokens": 2}},
    "models": {"fake-chat": {"backend": "fake"}},
    "batches": {"max_lines": MAX_LINES, "poll_s": 0.05, "objective": "asap"},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, str, dict[str, str]]]:
    """(the SDK on the gateway, its database URL, an admin key's auth header)."""
    with served_with_admin(tmp_path_factory.mktemp("blank-lines"), CONFIG) as (base, url, admin):
        key = admin["authorization"].removeprefix("Bearer ")
        with openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0) as client:
            yield client, url, admin


def _run(client: openai.OpenAI, content: bytes) -> Any:
    upload = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(600):
        batch = client.batches.retrieve(batch.id)
        if batch.status in FINAL:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch.id} still {batch.status}")


def _ledger_rows(url: str, batch_id: str) -> int:
    engine = db.make_sync_engine(url)
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT count(*) FROM ledger WHERE batch_id = :id")
            return int(connection.execute(query, {"id": batch_id}).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("blank", [b"\n", b"\n\n", b"\r\n \n\t\n"])
def test_max_lines_requests_and_trailing_blank_lines_run(
    served: tuple[openai.OpenAI, str, dict[str, str]], blank: bytes
) -> None:
    client, url, _ = served
    batch = _run(client, jsonl(*(line(f"r{n}") for n in range(MAX_LINES))) + blank)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (MAX_LINES, MAX_LINES)
    assert batch.output_file_id is not None
    answered = entries(client.files.content(batch.output_file_id).content)
    assert sorted(e["custom_id"] for e in answered) == ["r0", "r1", "r2"]
    for _ in range(100):  # the ledger's rows are written just after each line's answer
        if _ledger_rows(url, batch.id) == MAX_LINES:
            break
        time.sleep(0.05)
    assert _ledger_rows(url, batch.id) == MAX_LINES


def test_blank_lines_anywhere_are_skipped_and_lines_keep_their_numbers(
    served: tuple[openai.OpenAI, str, dict[str, str]],
) -> None:
    """As OpenAI's file limit counts requests: blank lines before, between and after count for nothing, and a
    line's number in an error is still its line in the file."""
    client, _, _ = served
    content = b"\n  \n" + jsonl(line("a")) + b"\n\n" + b'{"custom_id": "bad"}\n' + b"\t\n" + jsonl(line("b")) + b"\n"
    batch = _run(client, content)
    assert batch.request_counts is not None and batch.request_counts.total == MAX_LINES
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [(6, "invalid_method")]


def test_more_requests_than_max_lines_are_still_refused(served: tuple[openai.OpenAI, str, dict[str, str]]) -> None:
    client, _, _ = served
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("in.jsonl", b"\n".join(jsonl(line(f"r{n}")) for n in range(4))), purpose="batch")
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "too_many_lines"
    with pytest.raises(openai.BadRequestError) as empty:
        client.files.create(file=("in.jsonl", b"\n \n\r\n"), purpose="batch")
    assert isinstance(empty.value.body, dict) and empty.value.body["code"] == "empty_file"


def test_a_request_among_a_megabyte_of_blank_lines_is_one_request(
    served: tuple[openai.OpenAI, str, dict[str, str]],
) -> None:
    client, _, _ = served
    content = b"\n" * 500_000 + jsonl(line("far")) + b"\n" * 500_000
    upload = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert upload.bytes == len(content)
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(600):
        if (batch := client.batches.retrieve(batch.id)).status in FINAL:
            break
        time.sleep(0.05)
    assert batch.status == "completed" and batch.request_counts is not None and batch.request_counts.total == 1


@pytest.mark.parametrize(
    ("disposition", "stored"),
    [
        (b"filename*=UTF-8''r%C3%A9quests%20v2.jsonl", "réquests v2.jsonl"),
        (b"filename*=utf-8'en'plain.jsonl", "plain.jsonl"),
        (b"filename=\"ascii.jsonl\"; filename*=UTF-8''other.jsonl", "ascii.jsonl"),  # both: the plain one, as before
    ],
)
def test_a_part_named_by_filename_star_is_the_file(
    served: tuple[openai.OpenAI, str, dict[str, str]], disposition: bytes, stored: str
) -> None:
    """The form as a client that writes only RFC 5987's `filename*` for a name sends it (written by hand: httpx
    writes `filename=`)."""
    client, _, admin = served
    boundary = b"margin-test-boundary"
    body = b"".join(
        [
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n',
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; ' + disposition + b"\r\n",
            b"Content-Type: application/jsonl\r\n\r\n" + jsonl(line("x")) + b"\r\n",
            b"--" + boundary + b"--\r\n",
        ]
    )
    headers = {**admin, "content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    answer = httpx.post(f"{client.base_url}files", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["filename"] == stored and answer.json()["bytes"] == len(jsonl(line("x")))
    assert client.files.content(answer.json()["id"]).content == jsonl(line("x"))


def test_lines_of_only_a_byte_order_mark_count_against_max_lines() -> None:
    """A line holding only a byte-order mark (and blanks) is no request, but it is counted against `max_lines`:
    the C-level scan stops on the mark's bytes, so each such line costs Python work. Before, those lines were
    dropped uncounted: 12M of them and one request (48 MB, under `max_file_bytes`) took ~30 s of CPU per check;
    now the check stops after `max_lines` of them."""
    import orjson

    from margin.batches.jsonl import check_content, validate
    from margin.errors import InvalidRequest
    from margin.specs import BatchConfig

    bom = b"\xef\xbb\xbf"
    request = orjson.dumps(line("a"))
    content = (bom + b"\n" + bom + b" \t\r\n") * 3 + request
    assert check_content(content, BatchConfig(max_lines=7)) == 7
    with pytest.raises(InvalidRequest) as refused:
        check_content(bom + b"\n" * 2 + (bom + b"\n") * 12_000_000 + request, BatchConfig(max_lines=50_000))
    assert refused.value.code == "too_many_lines"
    good, bad = validate(content, "/v1/chat/completions", lambda name: name)
    assert [entry.line for entry in good] == [7] and bad == []  # the mark-only lines are no requests
