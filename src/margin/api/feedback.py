"""`POST /v1/margin/feedback`: outcomes of requests (success, score, business value), for cost per
successful task. Same API keys as inference; a key may grade only its own requests unless it is an admin
key (or the gateway runs open). Body: one object or a list (all or nothing). See margin.ledger.feedback."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from margin.api.admin import endpoint
from margin.api.edge import read_json
from margin.ledger import feedback
from margin.types import Principal


async def post_feedback(request: Request, principal: Principal) -> Any:
    services = request.app.state.services
    outcomes = feedback.parse_batch(await read_json(request))
    admin = principal.is_admin or services.keys.open_mode
    engine = services.sync_engine()

    def missing() -> bool:
        with engine.connect() as connection:
            found = feedback.check(connection, outcomes, principal.key_id, admin)
        return any(o.request_id not in found for o in outcomes)

    if await services.read(missing):
        await services.outbox.flush()  # the request's row may still wait in this process's outbox
    await services.read(feedback.record, engine, outcomes, principal.key_id, admin)
    return {"object": "list", "data": [o.to_json() for o in outcomes]}


def routes() -> list[Route]:
    return [Route("/v1/margin/feedback", endpoint(post_feedback, admin=False), methods=["POST"])]
