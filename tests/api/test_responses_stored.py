"""Stored responses (`responses.store`) end to end: a running `margin serve`, real HTTP, the official openai SDK
(and the Agents SDK) as the client, an OpenAI-like upstream that records the chat request margin sends it. A
response is stored before it is answered; `previous_response_id` prepends the stored turns (the upstream gets the
earlier user message and answer before the new one, and budgets reserve on all of it); retrieve, input_items,
delete; another key, an expired or deleted response: 404 (continuing one: OpenAI's 400
`previous_response_not_found`). With storage off (test_responses.py's gateway) the same fields stay 400s. Before:
`store: true` and `previous_response_id` were 400s, GET /v1/responses/{id} a 404."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from agents import Agent, RunConfig, Runner
from agents.models.openai_responses import OpenAIResponsesModel
from openai import AsyncOpenAI

from margin import keys
from margin.ledger import db as ledger_db
from margin.ledger import stored
from margin.ledger.models import stored_responses
from tests.api.test_responses import Live, responses_gateway

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LONG = "a" * 1000  # a 1,000-byte input: the budget below holds one in a prompt, not two


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    config = {
        "responses": {"store": True, "max_stored_bytes": 4096},
        "budgets": [{"name": "tight", "scope": {"kind": "model", "value": "tight"}, "usd": "0.002"}],
    }
    with responses_gateway(tmp_path_factory.mktemp("stored"), **config) as gateway:
        yield gateway


def _engine(live: Live) -> sa.Engine:
    return ledger_db.make_sync_engine(f"sqlite:///{live.db}")


def _other_key(db: Path, org: str | None = None) -> str:
    engine = ledger_db.make_sync_engine(f"sqlite:///{db}")
    try:
        return keys.create_key(engine, keys.NewKey("other", "other", {}, org))[1]
    finally:
        engine.dispose()


def _said(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each chat message's role and text (a string, or its text parts joined)."""
    said = []
    for message in messages:
        content = message["content"]
        text = content if isinstance(content, str) else "".join(part["text"] for part in content)
        said.append((message["role"], text))
    return said


def _stored(response: Any) -> Any:
    """A Response's `store` (which the SDK's types leave out: the JSON's field, kept as an extra)."""
    return response.model_dump()["store"]


def _texts(page: Any) -> list[str]:
    return [item["content"][0]["text"] for item in page.model_dump()["data"]]


def _get(live: Live, path: str, key: str | None = None, method: str = "GET") -> httpx.Response:
    auth = {"authorization": f"Bearer {key or live.key}"}
    return httpx.request(method, f"{live.url}/v1/responses/{path}", headers=auth, timeout=30)


def test_two_turns_by_previous_response_id_send_the_first_turn_upstream(live: Live) -> None:
    client = live.client()
    first = client.responses.create(model="plain", input="My name is Ada.", instructions="be brief")
    assert _stored(first) is True and first.output_text == "hello world"
    sent = len(live.bodies)
    second = client.responses.create(model="plain", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == "hello world"
    (body,) = live.bodies[sent:]
    # the first turn's input and answer, then this one's; the first turn's instructions are not carried over
    assert _said(body["messages"]) == [
        ("user", "My name is Ada."),
        ("assistant", "hello world"),
        ("user", "What is my name?"),
    ]
    third = client.responses.create(model="plain", input="And again?", previous_response_id=second.id)
    assert [text for _, text in _said(live.bodies[-1]["messages"])] == [
        "My name is Ada.", "hello world", "What is my name?", "hello world", "And again?"
    ]  # fmt: skip
    with _engine(live).connect() as connection:
        row = connection.execute(sa.select(stored_responses).where(stored_responses.c.id == third.id)).one()
    # only this turn's input is stored, with the link to the turn before
    assert row.previous_id == second.id and [item["content"] for item in row.input] == [
        [{"type": "input_text", "text": "And again?"}]
    ]


def test_retrieve_is_the_response_as_created_and_input_items_are_listed(live: Live) -> None:
    client = live.client()
    items: Any = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "three"}]},
    ]
    created = client.responses.create(model="plain", input=items)
    retrieved = client.responses.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump() and retrieved.output_text == "hello world"
    listed = client.responses.input_items.list(created.id)
    assert _texts(listed) == ["three", "two", "one"]
    ascending = client.responses.input_items.list(created.id, order="asc", limit=2)
    page = ascending.model_dump()
    assert _texts(ascending) == ["one", "two"] and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ascending.data[0].id, ascending.data[1].id)
    rest = client.responses.input_items.list(created.id, order="asc", after=page["last_id"])
    assert _texts(rest) == ["three"] and rest.has_more is False


def test_input_items_sent_with_a_null_id_are_listed_with_one_of_their_own(live: Live) -> None:
    """An item whose `id` is null (as a client that writes every optional field sends it) gets an id as one
    without any does, so the list has `first_id` and pages by `after`. Before: listed with `id: null`."""
    items = [
        {"type": "message", "role": "user", "content": "one", "id": None, "status": None},
        {"role": "user", "content": "two", "id": None},
        {"role": "user", "content": "three", "id": "msg_mine"},
    ]
    created = live.post({"model": "plain", "input": items})
    assert created.status_code == 200, created.text
    response_id, request_id = created.json()["id"], created.headers["x-request-id"]
    page = live.client().responses.input_items.list(response_id, order="asc", limit=1).model_dump()
    assert [item["id"] for item in page["data"]] == [page["first_id"]] == [f"msg_{request_id}_in0"]
    rest = live.client().responses.input_items.list(response_id, order="asc", after=page["last_id"])
    assert _texts(rest) == ["two", "three"]
    assert [item.id for item in rest.data] == [f"msg_{request_id}_in1", "msg_mine"]


def test_include_input_image_urls_is_accepted_and_they_are_listed(live: Live) -> None:
    """`include: ["message.input_image.image_url"]` asks for what margin always keeps: the input images' URLs in
    the stored input items. Before: a 400 naming `include.0`."""
    image = {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"}
    content: Any = [{"type": "input_text", "text": "look"}, image]
    created = live.client().responses.create(
        model="plain", input=[{"role": "user", "content": content}], include=["message.input_image.image_url"]
    )
    assert created.output_text == "hello world"
    (item,) = live.client().responses.input_items.list(created.id).model_dump(exclude_none=True)["data"]
    assert item["content"][1] == image


def test_input_items_with_one_id_twice_page_to_the_end(live: Live) -> None:
    """An item sent with an earlier item's id is listed with an id of its own: paging `after` an id ends. Before:
    a page ending on the second one restarted after the first, and the SDK's auto-paging never ended."""
    items = [{"role": "user", "content": text} for text in ("one", "two", "three", "four")]
    items[0]["id"] = items[2]["id"] = "msg_same"
    created = live.post({"model": "plain", "input": items})
    response_id, request_id = created.json()["id"], created.headers["x-request-id"]
    items_api = live.client().responses.input_items
    page = items_api.list(response_id, order="asc", limit=1)
    pages = [page]
    while page.has_more and len(pages) < 6:  # bounded: four pages hold the four items
        page = items_api.list(response_id, order="asc", limit=1, after=page.data[-1].id)
        pages.append(page)
    texts = [text for page in pages for text in _texts(page)]
    ids = [item.id for page in pages for item in page.data]
    assert texts == ["one", "two", "three", "four"]
    assert ids == ["msg_same", f"msg_{request_id}_in1", f"msg_{request_id}_in2", f"msg_{request_id}_in3"]


def test_retrieve_as_a_stream_is_a_400_not_an_empty_stream(live: Live) -> None:
    """`stream=true` on retrieve (the SDK's `retrieve(..., stream=True)`) asks for events margin does not keep:
    a 400 naming it, where the JSON answer was an SSE stream with no events. `stream=false` is the JSON."""
    created = live.client().responses.create(model="plain", input="stream it back")
    with pytest.raises(openai.BadRequestError) as refused:
        live.client().responses.retrieve(created.id, stream=True)
    assert refused.value.param == "stream" and refused.value.code == "unsupported_value"
    assert _get(live, f"{created.id}?stream=false").json()["id"] == created.id


def test_cancel_is_a_400_saying_why_for_a_stored_response_and_404_for_another(live: Live) -> None:
    """`client.responses.cancel`: margin runs no background responses, so a stored one is complete (400 saying
    so); one the key cannot read is the 404 of retrieve. Before: a 404 `no route` for every response."""
    created = live.client().responses.create(model="plain", input="done already")
    with pytest.raises(openai.BadRequestError) as refused:
        live.client().responses.cancel(created.id)
    assert refused.value.code == "unsupported_value" and "background" in refused.value.message
    assert live.client().responses.retrieve(created.id).status == "completed"
    with pytest.raises(openai.NotFoundError) as missing:
        live.client(_other_key(live.db)).responses.cancel(created.id)
    assert missing.value.code == "not_found"


def test_delete_then_404_and_the_conversation_cannot_continue(live: Live) -> None:
    client = live.client()
    created = client.responses.create(model="plain", input="forget me")
    assert _get(live, created.id, method="DELETE").json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    assert _get(live, created.id, method="DELETE").status_code == 404
    sent = len(live.bodies)
    with pytest.raises(openai.BadRequestError) as refused:  # OpenAI's answer, which a client may fall back on
        client.responses.create(model="plain", input="again", previous_response_id=created.id)
    assert (refused.value.code, refused.value.param) == ("previous_response_not_found", "previous_response_id")
    assert len(live.bodies) == sent


def test_another_key_gets_404_a_key_of_the_same_org_reads(live: Live) -> None:
    created = live.client().responses.create(model="plain", input="mine")
    other = _other_key(live.db)
    for answer in (
        _get(live, created.id, other),
        _get(live, f"{created.id}/input_items", other),
        _get(live, created.id, other, method="DELETE"),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"
    continued = live.post({"model": "plain", "input": "x", "previous_response_id": created.id}, key=other)
    assert (continued.status_code, continued.json()["error"]["code"]) == (400, "previous_response_not_found")
    assert _get(live, created.id).status_code == 200  # still there for its owner
    first, second = _other_key(live.db, "acme"), _other_key(live.db, "acme")
    shared = live.client(first).responses.create(model="plain", input="ours")
    assert live.client(second).responses.retrieve(shared.id).output_text == "hello world"
    assert _get(live, shared.id).status_code == 404  # a key outside the org


def test_store_false_stores_nothing(live: Live) -> None:
    created = live.client().responses.create(model="plain", input="not kept", store=False)
    assert _stored(created) is False
    assert _get(live, created.id).status_code == 404


def test_a_stream_is_stored_once_completed_a_failed_one_is_not(live: Live) -> None:
    with live.client().responses.stream(model="plain", input="stream me") as stream:
        final = stream.get_final_response()
    assert _stored(final) is True
    retrieved = live.client().responses.retrieve(final.id)  # readable as soon as the stream ended
    assert retrieved.output_text == final.output_text == "hello world" and retrieved.status == "completed"
    assert retrieved.usage is not None and final.usage is not None
    assert retrieved.usage.output_tokens == final.usage.output_tokens
    with live.client().responses.with_streaming_response.create(model="cut-chat", input="a b", stream=True) as raw:
        events: list[Any] = list(raw.parse())
    assert events[-1].type == "response.failed"
    assert _get(live, f"resp_{raw.headers['x-request-id']}").status_code == 404


def test_an_answer_over_max_stored_bytes_is_not_stored_and_says_so(live: Live) -> None:
    created = live.client().responses.create(model="plain", input="b" * 5000)
    assert _stored(created) is False and created.output_text == "hello world"
    assert _get(live, created.id).status_code == 404


def test_an_expired_response_is_404_and_pruned(live: Live) -> None:
    created = live.client().responses.create(model="plain", input="short-lived")
    engine = _engine(live)
    past = datetime.now(UTC) - timedelta(seconds=1)
    with engine.begin() as connection:  # time travel: its retention ended
        connection.execute(stored_responses.update().where(stored_responses.c.id == created.id).values(expires_at=past))
    assert _get(live, created.id).status_code == 404
    assert _get(live, f"{created.id}/input_items").status_code == 404
    answer = live.post({"model": "plain", "input": "x", "previous_response_id": created.id})
    assert (answer.status_code, answer.json()["error"]["param"]) == (400, "previous_response_id")
    assert stored.prune(engine) >= 1
    with engine.connect() as connection:
        assert (
            connection.execute(sa.select(stored_responses.c.id).where(stored_responses.c.id == created.id)).first()
            is None
        )
    engine.dispose()


def test_budgets_reserve_on_the_expanded_prompt(live: Live) -> None:
    first = live.post({"model": "tight", "input": LONG, "max_output_tokens": 100})
    assert first.status_code == 200, first.text
    assert live.post({"model": "tight", "input": LONG, "max_output_tokens": 100, "store": False}).status_code == 200
    sent = len(live.bodies)
    body = {"model": "tight", "input": LONG, "max_output_tokens": 100, "previous_response_id": first.json()["id"]}
    refused = live.post(body)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    assert len(live.bodies) == sent


def test_the_agents_sdk_continues_a_run_by_previous_response_id(live: Live) -> None:
    async def run() -> tuple[Any, Any]:
        client = AsyncOpenAI(base_url=live.url + "/v1", api_key=live.key, max_retries=0)
        try:
            model = OpenAIResponsesModel(model="plain", openai_client=client)
            agent = Agent(name="chat", instructions="Answer briefly.", model=model)
            config = RunConfig(tracing_disabled=True)
            first = await Runner.run(agent, "Remember: blue.", run_config=config)
            second = await Runner.run(
                agent, "Which colour?", run_config=config, previous_response_id=first.last_response_id
            )
            return first, second
        finally:
            await client.close()

    sent = len(live.bodies)
    first, second = asyncio.run(run())
    assert first.final_output == second.final_output == "hello world"
    assert _said(live.bodies[sent + 1]["messages"]) == [
        ("system", "Answer briefly."),
        ("user", "Remember: blue."),
        ("assistant", "hello world"),
        ("user", "Which colour?"),
    ]


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"conversation": "conv_1"}, "conversation"), ({"background": True}, "background")],
)
def test_what_storage_does_not_cover_stays_refused(live: Live, fields: dict[str, Any], param: str) -> None:
    answer = live.post({"model": "plain", "input": "hi", **fields})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param


def test_counting_the_input_of_an_unknown_previous_response_is_a_count_s_outcome(live: Live) -> None:
    """`/v1/responses/input_tokens` with a `previous_response_id` margin does not hold: the 404 is counted as the
    count's outcome (`margin_count_tokens_total`), as its other errors are, not as a rejection too, and carries the
    headers every answer has (it was counted in `margin_rejections_total`, against the README, with no cost)."""
    engine = _engine(live)
    try:
        admin = keys.create_key(engine, keys.NewKey("metrics", is_admin=True))[1]
    finally:
        engine.dispose()

    def scrape() -> str:
        return httpx.get(live.url + "/metrics", headers={"authorization": f"Bearer {admin}"}).text

    before = scrape()
    answer = httpx.post(
        live.url + "/v1/responses/input_tokens",
        json={"model": "chosen-by-the-caller", "input": "hi", "previous_response_id": "resp_unknown"},
        headers={"authorization": f"Bearer {live.key}"},
    )
    assert answer.status_code in (400, 404), answer.text
    code = answer.json()["error"]["code"]
    assert answer.headers["x-margin-cost-usd"] == "0.000000000" and "x-margin-overhead-ms" in answer.headers
    assert f'outcome="{code}"' in scrape() and f'outcome="{code}"' not in before
    after = scrape()
    rejected = f'margin_rejections_total{{reason="{code}"}}'
    assert _value(after, rejected) == _value(before, rejected)  # (other tests here continue unknown ids: rows)
    assert "chosen-by-the-caller" not in after  # a label is never a caller's text (200 values fill the pool)


def _value(scraped: str, series: str) -> float:
    """A series' value in a Prometheus scrape (0 when absent)."""
    return next((float(line.split()[-1]) for line in scraped.splitlines() if line.startswith(series + " ")), 0.0)
