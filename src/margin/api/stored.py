"""Stored responses over HTTP (`responses.store`): `GET /v1/responses/{id}` (the Response object as it was
answered), `DELETE /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` (OpenAI's paged list) and
`POST /v1/responses/{id}/cancel` (a 400: margin runs no background responses), for
the key that made the response or a key of its org (anyone else gets 404, as for an expired one); `Keeper`,
which stores a Responses call's answer before it is sent (so it is readable as soon as the client has it), and
`continued`, the items a `previous_response_id` prepends. The database work runs on the read threads."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from margin.api.admin import endpoint, page_of
from margin.api.batches import page_window
from margin.errors import InvalidRequest, NotFound
from margin.ledger import stored
from margin.types import Principal

log = logging.getLogger(__name__)
DEFAULT_ITEMS, MOST_ITEMS = 20, 100  # OpenAI's `limit` default and bound


class Keeper:
    """Stores one Responses call's answer (a completed or incomplete Response) before it is sent. An answer over
    `responses.max_stored_bytes`, or one the database refused, is sent with `store: false` (and nothing stored)."""

    __slots__ = ("owner", "previous_id", "services", "turn_input")

    def __init__(
        self, services: Any, principal: Principal | None, turn_input: list[dict[str, Any]], previous_id: str | None
    ) -> None:
        self.services, self.owner = services, stored.Owner.of(principal)
        self.turn_input, self.previous_id = turn_input, previous_id

    async def keep(self, response: dict[str, Any]) -> None:
        if response.get("status") not in ("completed", "incomplete"):
            response["store"] = False
            return
        config = self.services.settings.responses
        turn = stored.Turn(str(response["id"]), self.previous_id, self.turn_input, response)
        limits = (config.retention_days, config.max_stored_bytes)
        try:
            kept = await self.services.read(stored.save, self.services.sync_engine(), self.owner, turn, limits)
        except Exception:
            log.exception("storing response %s failed; it is answered with store: false", turn.response_id)
            kept = False
        if not kept:
            response["store"] = False


async def continued(services: Any, principal: Principal | None, response_id: str) -> list[dict[str, Any]]:
    """The stored conversation `previous_response_id` names, as input items (oldest first)."""
    config = services.settings.responses
    bounds = stored.Bounds(config.max_chain_turns, config.max_chain_bytes)
    owner = stored.Owner.of(principal)
    return await services.read(stored.chain, services.sync_engine(), owner, response_id, bounds)  # type: ignore[no-any-return]


def _target(request: Request, principal: Principal) -> tuple[Any, stored.Owner, str]:
    services = request.app.state.services
    response_id = request.path_params["response_id"]
    if len(response_id) > 64:
        raise NotFound(f"no response with id {response_id[:64]!r}…", code="not_found")
    return services, stored.Owner.of(principal), response_id


async def get_response(request: Request, principal: Principal) -> Any:
    """The stored Response as JSON; `stream=true` (which replays a background response's events, and which
    a JSON answer would leave the client waiting on as an empty stream) is refused."""
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):
        why = "stream: a stored response is retrieved whole (margin has no background responses to replay)"
        raise InvalidRequest(f"{why}; retrieve it without `stream`", param="stream", code="unsupported_value")
    services, owner, response_id = _target(request, principal)
    return await services.read(stored.fetch, services.sync_engine(), owner, response_id)


async def delete_response(request: Request, principal: Principal) -> Any:
    services, owner, response_id = _target(request, principal)
    return await services.read(stored.delete, services.sync_engine(), owner, response_id)


async def cancel_response(request: Request, principal: Principal) -> Any:
    """`POST /v1/responses/{id}/cancel` cancels a background response: margin runs none, so a stored response
    (already complete) is a 400 saying so, anything else the 404 of `GET`."""
    services, owner, response_id = _target(request, principal)
    await services.read(stored.fetch, services.sync_engine(), owner, response_id)
    why = "only a background response can be cancelled, and margin runs none: this response is already complete"
    raise InvalidRequest(why, code="unsupported_value")


async def list_input_items(request: Request, principal: Principal) -> Any:
    services, owner, response_id = _target(request, principal)
    shown = page_window(request, DEFAULT_ITEMS, MOST_ITEMS, orderable=True)
    page = (shown.limit, shown.after, shown.ascending)
    data, more = await services.read(stored.items, services.sync_engine(), owner, response_id, page)
    return page_of(data, more)


def routes() -> list[Route]:
    return [
        Route("/v1/responses/{response_id}", endpoint(get_response, admin=False), methods=["GET"]),
        Route("/v1/responses/{response_id}", endpoint(delete_response, admin=False), methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", endpoint(list_input_items, admin=False), methods=["GET"]),
        Route("/v1/responses/{response_id}/cancel", endpoint(cancel_response, admin=False), methods=["POST"]),
    ]
