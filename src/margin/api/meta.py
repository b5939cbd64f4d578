"""GET /v1/models, /v1/models/{id}, /healthz (liveness, with details) and /readyz (all backends loaded)."""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from margin import __version__
from margin.api.errors import error_response, json_response
from margin.errors import MarginError, ModelNotFound
from margin.keycache import authenticate
from margin.pipeline.steps.auth import caller
from margin.specs import Policy


def _model_entries(services: Any, allowed: frozenset[str] | None) -> list[dict[str, Any]]:
    """The models and routed names; with `allowed` (the caller's policy lists models), only those it may use:
    a model (or an alias of one) it lists, a routed name it lists with at least one of its models."""
    created = int(services.started_at)
    entries = []
    for name, target in services.targets.items():
        if allowed is not None and target.public not in allowed:
            continue
        entry = {"id": name, "object": "model", "created": created, "owned_by": target.model.owned_by}
        if name != target.public:
            entry["parent"] = target.public
        entries.append(entry)
    for name, route in services.settings.routes.items():
        if allowed is not None and not (
            name in allowed and any(services.targets[m].public in allowed for m in route.ladder)
        ):
            continue
        entries.append({"id": name, "object": "model", "created": created, "owned_by": f"margin-router:{route.policy}"})
    return entries


async def _allowed(request: Request) -> frozenset[str] | None:
    """Listing models needs the same key as inference (so a closed gateway does not leak its catalogue); the
    models the caller's merged policy (key, team, org, tags: x-margin-tags as for inference) lets it use."""
    services = request.app.state.services
    principal = await authenticate(services.keys, request.headers)
    header_keys = set(services.settings.tags.header_keys)
    _, subject = caller(principal, request.headers.get("x-margin-tags"), header_keys)
    policy: Policy = services.governance.rules.policy_for(subject, principal.policy)
    return policy.allowed_models


async def list_models(request: Request) -> Response:
    try:
        allowed = await _allowed(request)
    except MarginError as exc:
        return error_response(exc)
    return json_response({"object": "list", "data": _model_entries(request.app.state.services, allowed)})


async def get_model(request: Request) -> Response:
    try:
        allowed = await _allowed(request)
        wanted = request.path_params["model"]
        for entry in _model_entries(request.app.state.services, allowed):
            if entry["id"] == wanted:
                return json_response(entry)
        raise ModelNotFound(f"The model `{wanted}` does not exist or you do not have access to it.", param="model")
    except MarginError as exc:
        return error_response(exc)


def _status(services: Any) -> tuple[str, dict[str, Any]]:
    backends = {name: backend.health() for name, backend in services.backends.items()}
    return ("ok" if all(b.get("status") == "ok" for b in backends.values()) else "starting"), backends


def _details(services: Any, status: str, backends: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": status,
        "version": __version__,
        "pid": os.getpid(),  # the process to send SIGHUP to (reload rules)
        "uptime_s": round(time.time() - services.started_at, 3),
        "config_hash": services.config_hash,
        "open_mode": services.keys.open_mode,
        "key_lookups": services.keys.queries,  # key queries sent to the database since start
        "backends": backends,
        "ledger": {**services.outbox.stats(), "refused_backlogged": services.settle.refused},
    }


async def _operator(request: Request) -> bool:
    """An admin key, or open mode (loopback only, where every caller is the operator, as for /admin)."""
    try:
        principal = await authenticate(request.app.state.services.keys, request.headers)
    except MarginError:
        return False
    return principal.is_admin or principal.key_id is None


async def healthz(request: Request) -> Response:
    """Liveness. Its details (pid, config hash, backends, ledger outbox depth, open mode) only for an operator:
    anyone else learns `{"status": ...}` and nothing they could use."""
    services = request.app.state.services
    status, backends = _status(services)
    body = _details(services, status, backends) if await _operator(request) else {"status": status}
    return json_response(body)


async def readyz(request: Request) -> Response:
    """200 once every backend has loaded, else 503: a bare status, for load balancers."""
    status, _ = _status(request.app.state.services)
    return json_response({"status": status}, status=200 if status == "ok" else 503)
