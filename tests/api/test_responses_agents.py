"""OpenAI's Agents SDK against a running gateway: its default model speaks the Responses API, so an agent with a
function tool makes two `/v1/responses` calls through margin (the model asks for the tool; the SDK runs it and
sends its output back as a `function_call_output` item; the model answers), whole and streamed. What the SDK
sends must pass margin's strict validation, what margin answers must parse in the SDK, and each call is a ledger
row of its own. Before margin served `/v1/responses`, the first call was a 404."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.models.openai_responses import OpenAIResponsesModel
from openai import AsyncOpenAI

from tests.api.test_responses import Live, responses_gateway
from tests.helpers import ledger_rows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with responses_gateway(tmp_path_factory.mktemp("agents")) as gateway:
        yield gateway


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


async def _run(live: Live, stream: bool) -> tuple[Any, list[str], list[str]]:
    """The agent's final output, the raw stream events' types (streamed), and its model calls' response ids."""
    client = AsyncOpenAI(base_url=live.url + "/v1", api_key=live.key, max_retries=0)
    seen: list[str] = []
    try:
        model = OpenAIResponsesModel(model="plain", openai_client=client)
        agent = Agent(name="weather", instructions="Answer briefly.", model=model, tools=[get_weather])
        config = RunConfig(tracing_disabled=True)
        if not stream:
            result = await Runner.run(agent, "What is the weather in Paris?", run_config=config)
            return result.final_output, seen, [str(r.response_id) for r in result.raw_responses]
        streamed = Runner.run_streamed(agent, "What is the weather in Paris?", run_config=config)
        async for event in streamed.stream_events():
            if event.type == "raw_response_event":
                seen.append(event.data.type)
        return streamed.final_output, seen, [str(r.response_id) for r in streamed.raw_responses]
    finally:
        await client.close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_agent_with_a_function_tool_runs_through_margin(live: Live, stream: bool) -> None:
    before = len(live.bodies)
    final, seen, response_ids = asyncio.run(_run(live, stream))
    assert final == "hello world"  # the upstream's answer once the tool's output came back
    sent = live.bodies[before:]
    assert len(sent) == 2  # two model calls, each a chat request upstream
    assert [tool["function"]["name"] for tool in sent[0]["tools"]] == ["get_weather"]
    tool_messages = [m for m in sent[1]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages] == [("call_1", "sunny in Paris")]
    assert bool(sent[0].get("stream")) is stream
    if stream:
        assert seen.count("response.completed") == 2 and "response.function_call_arguments.delta" in seen
    assert len(response_ids) == 2 and all(rid.startswith("resp_") for rid in response_ids)
    for response_id in response_ids:  # each model call is one ledger row of the Responses endpoint
        request_id = response_id.removeprefix("resp_")
        row = live.row(request_id)
        assert (row.endpoint, row.http_status, row.stream) == ("responses", 200, stream)
        assert ledger_rows(live.db, request_id) == 1
