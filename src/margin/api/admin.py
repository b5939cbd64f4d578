"""The admin API (`/admin/...`, admin keys only) and `GET /v1/margin/usage` (any key, its own usage only).

Changes are written to the database and take effect at once on this replica and within
`admission.refresh_s` on the others; nothing restarts and requests in flight keep their admission."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from margin import keyops, keys
from margin.api import audit as audit_api
from margin.api.edge import known_query, parse_json, read_body, read_json
from margin.api.errors import INTERNAL, error_response, json_response
from margin.economics.money import from_nanousd, usd_str
from margin.errors import ConfigError, InternalError, InvalidRequest, MarginError, NotFound, PermissionDenied
from margin.governance.admission import counter_name, window
from margin.governance.rules import Part, Subject, check_policy_models, delete_rule, partition, save_rule
from margin.keycache import authenticate
from margin.ledger import audit
from margin.ledger.ids import request_id as new_request_id
from margin.ledger.models import api_keys
from margin.ledger.read.window import parse_span
from margin.pipeline.steps.auth import caller
from margin.report.queries import Window, parse_limit, summarize
from margin.specs import EACH, MAX_USER, BudgetSpec, Scope
from margin.types import Principal

log = logging.getLogger("margin")

KINDS = {"budgets": "budget", "limits": "limit", "flags": "flag"}
USAGE_QUERY = frozenset({"since", "until", "by", "limit"})  # `/v1/margin/usage` also takes `user`
KEY_PAGE_QUERY = frozenset({"limit", "after"})
MAX_KEY_ID = 32  # the column's size
Handler = Callable[[Request, Any], Awaitable[Any]]


def endpoint(
    handler: Handler, admin: bool = True, action: str | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """A route's handler behind the key check. `action`: a change, recorded in the audit log (by the handler,
    with the change; here, an attempt denied or failed) under a request id the answer carries."""

    async def run(request: Request) -> Response:
        services, principal = request.app.state.services, None
        request_id = None
        if action:  # the gateway's id for this request (`margin.app.Gateway.stamped`): answer, audit and log agree
            request_id = request.state.request_id = getattr(request.state, "request_id", None) or new_request_id()
        began = datetime.now(UTC) if action else None
        try:
            principal = await authenticate(services.keys, request.headers)
            if admin and not (principal.is_admin or services.keys.open_mode):
                raise PermissionDenied("this endpoint needs an admin key (margin keys create --admin)")
        except MarginError as exc:
            if action:
                await audit_api.attempt(request, principal, _attempt(request, action, "denied", exc))
            return error_response(exc, request_id)
        try:
            result = await handler(request, principal)
        except MarginError as exc:
            if action and not isinstance(exc, InternalError):  # InternalError: made, but its row was refused
                await audit_api.attempt(request, principal, _attempt(request, action, "failed", exc))
            return error_response(exc, request_id)
        except Exception as exc:
            if not action or isinstance(exc, ClientDisconnect):
                raise  # the app's handlers: a 500 logged, or a client that left (nothing logged, nothing recorded)
            log.exception("admin %s failed", action)  # a crash: a failed attempt, the usual 500 (its request id)
            await audit_api.attempt(request, principal, _crashed(request, action, exc), since=began)
            return error_response(InternalError(INTERNAL), request_id)
        answer = result if isinstance(result, Response) else json_response(result)
        if request_id:
            answer.headers["x-margin-request-id"] = answer.headers["x-request-id"] = request_id
        return answer

    return run


def page_of(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """A page of an OpenAI-style list (cursor pagination: the next page is `after` its `last_id`)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def _attempt(request: Request, action: str, outcome: str, error: MarginError) -> audit.Change:
    return _change(request, action, outcome, {"error": error.code})


def _crashed(request: Request, action: str, error: Exception) -> audit.Change:
    """An attempt that ended in an unexpected exception: its class name, never its message (which may hold a
    caller's values or a database's)."""
    return _change(request, action, "failed", {"error": InternalError.default_code, "exception": type(error).__name__})


def _change(request: Request, action: str, outcome: str, after: dict[str, Any]) -> audit.Change:
    action = action.format(kind=_kind(request)) if "{kind}" in action else action
    return audit.Change(action, audit_api.target(request), outcome, after=after)


def _known_orgs(engine: Any) -> list[str]:
    with engine.connect() as connection:
        found = connection.execute(sa.select(api_keys.c.org).where(api_keys.c.org.is_not(None)).distinct())
        return sorted(row.org for row in found)


def _money(amount: int, money: bool) -> Any:
    return usd_str(from_nanousd(amount)) if money else amount


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A budget's current state, unformatted: its window and, per counter (per org for a per-org budget, else
    the one under `None`), (spent, reserved) in integer nano-USD or tokens."""

    budget: BudgetSpec
    source: str  # "config" or "admin"
    start: datetime | None
    end: datetime | None
    each: dict[str | None, tuple[int, int]]  # empty for a per-value budget (`user=*`, `tag=customer=*`)

    @property
    def money(self) -> bool:
        return self.budget.usd is not None


async def budget_states(services: Any, principal_filter: Subject | None = None) -> list[BudgetState]:
    """Each budget with its current window, spent and reserved (only those matching a subject, if given), from
    one read of the counters. A per-org budget (team, tag or user scope without `org`) keeps one counter per org:
    for a subject, its org's; without one, every org that has keys (and callers in no org, under `None`). A
    per-value or user budget keeps one per value: for a subject naming its value (`?user=`, the tag's header),
    that value's; else none is read (never a list of values: unbounded)."""
    rules, now = services.governance.rules, datetime.now(UTC)
    budgets = rules.budgets if principal_filter is None else tuple(rules.budgets_for(principal_filter))
    orgs: list[str | None] = [None]
    if principal_filter is None and any(b.scope.per_org and not b.scope.unlisted for b in budgets):
        orgs += await services.read(_known_orgs, services.sync_engine())
    parts = [_parts(budget.scope, principal_filter, orgs) for budget in budgets]
    listed = [(b, p) for b, part in zip(budgets, parts, strict=True) for p in part]
    # after a restart, a counter no request used yet read 0; never one per end user or tag value (a caller could
    # name any number of them: each a ledger read and a place among `admission.max_budget_counters`)
    await services.governance.reconcile([(b, p) for b, p in listed if not b.scope.unlisted], now)
    names = [counter_name(b, window(b.period, now)[0], p) for b, p in listed]
    counters = await services.governance.store.counters(names) if names else {}
    out = []
    for budget, part in zip(budgets, parts, strict=True):
        start, end = window(budget.period, now)
        each = {p.org: counters.get(counter_name(budget, start, p), (0, 0)) for p in part}
        source = "admin" if ("budget", budget.name) in rules.stored else "config"
        out.append(BudgetState(budget, source, start, end, each))
    return out


def _parts(scope: Scope, subject: Subject | None, orgs: list[str | None]) -> list[Part]:
    """The counters of a budget `budget_states` reads (see there)."""
    if subject is not None:
        part = partition(scope, subject)
        return [] if scope.unlisted and part.value in (None, EACH) else [part]
    if scope.unlisted:
        return []
    return [Part(org) for org in orgs] if scope.per_org else [Part()]


async def budget_status(services: Any, principal_filter: Subject | None = None) -> list[dict[str, Any]]:
    """`budget_states` as the admin API and `/v1/margin/usage` show them: for a subject, a per-org budget's
    counter of its org (named in `org`); for the admin listing, their sum and each org's in `by_org`. A
    per-value or user budget says so (`each`); its `spent` and `reserved` are the subject's value's, or null."""
    out = []
    for state in await budget_states(services, principal_filter):
        budget, money = state.budget, state.money
        entry = {
            **budget.model_dump(mode="json"),
            "source": state.source,
            "window_start": state.start.isoformat() if state.start else None,
            "resets_at": state.end.isoformat() if state.end else None,
            "spent": _money(sum(spent for spent, _ in state.each.values()), money),
            "reserved": _money(sum(reserved for _, reserved in state.each.values()), money),
            "unit": "usd" if money else "tokens",
        }
        if budget.scope.unlisted:
            entry["each"] = "user" if budget.scope.kind == "user" else "tag value"
        if budget.scope.unlisted and not state.each:  # no value named: nothing read, nothing listed
            entry.update(spent=None, reserved=None)
        elif budget.scope.per_org and principal_filter is not None:
            entry["org"] = next(iter(state.each))
        elif budget.scope.per_org:
            entry["by_org"] = [
                {"org": org, "spent": _money(spent, money), "reserved": _money(reserved, money)}
                for org, (spent, reserved) in state.each.items()
                if spent or reserved
            ]
        out.append(entry)
    return out


def _kind(request: Request) -> str:
    return KINDS[request.url.path.split("/")[2]]


async def list_rules(request: Request, _: Principal) -> Any:
    services, kind = request.app.state.services, _kind(request)
    if kind == "budget":
        return {"data": await budget_status(services)}
    return {"data": services.governance.rules.listing(kind)}


async def put_rule(request: Request, principal: Principal) -> Any:
    services, kind = request.app.state.services, _kind(request)
    data = await read_json(request, exact=True)
    origin = audit_api.origin(request, principal)
    spec = await services.read(save_rule, services.sync_engine(), kind, data, origin, services.settings)
    await services.governance.refresh()
    return spec.model_dump(mode="json")


async def delete_rule_route(request: Request, principal: Principal) -> Any:
    services, kind = request.app.state.services, _kind(request)
    name, origin = request.path_params["name"], audit_api.origin(request, principal)
    await services.read(delete_rule, services.sync_engine(), services.settings, kind, name, origin)
    await services.governance.refresh()
    return {"deleted": name, "kind": kind}


async def list_keys(request: Request, _: Principal) -> Any:
    """OpenAI's cursor pagination: `limit` keys (`audit`'s page: 100, at most 500) in the order of their ids,
    `after` the last id of the page before; `has_more`, `first_id`, `last_id` say where the page stands."""
    services, params = request.app.state.services, request.query_params
    known_query(params, KEY_PAGE_QUERY)
    limit = parse_limit(params.get("limit"), audit_api.DEFAULT_PAGE, audit_api.MAX_PAGE)
    after = params.get("after") or None
    if after is not None and not (len(after) <= MAX_KEY_ID and after.isascii() and after.isprintable()):
        raise InvalidRequest(f"after: a key id, at most {MAX_KEY_ID} printable ASCII characters", param="after")
    records, more = await services.read(keys.page_keys, services.sync_engine(), limit, after)
    return page_of([r.public() for r in records], more)


async def create_key(request: Request, principal: Principal) -> Any:
    spec = keys.KeyRequest.parse(await read_json(request, exact=True)).spec()
    services = request.app.state.services
    check_policy_models(spec.policy, services.settings)
    origin = audit_api.origin(request, principal)
    record, key = await services.read(keys.create_key, services.sync_engine(), spec, origin)
    services.keys.created()
    return json_response({**record.public(), "key": key}, status=201)


async def revoke_key(request: Request, principal: Principal) -> Any:
    services, origin = request.app.state.services, audit_api.origin(request, principal)
    record = await services.read(keys.revoke_key, services.sync_engine(), request.path_params["key_id"], origin)
    await services.keywatch.changed()  # every process: at once here, the others at once or at their next pass
    return record.public()


async def rotate_key(request: Request, principal: Principal) -> Any:
    services = request.app.state.services
    body = await read_body(request, services.settings.server.max_body_bytes)
    grace = keyops.RotateRequest.parse(parse_json(body, exact=True) if body.strip() else {}).grace_s
    key_id = request.path_params["key_id"]
    origin = audit_api.origin(request, principal)
    record, key = await services.read(
        keyops.rotate_key, services.sync_engine(), key_id, timedelta(seconds=grace), origin
    )
    await services.keywatch.changed()  # the old secret's grace (0: it stops now) applies at once, everywhere
    valid_until = record.previous_valid_until.isoformat() if record.previous_valid_until else None
    return {**record.public(), "key": key, "valid_until": valid_until}


async def usage(request: Request, _: Principal) -> Any:
    services, params = request.app.state.services, request.query_params
    known_query(params, USAGE_QUERY)
    window_ = Window(*parse_span(params.get("since"), params.get("until")))
    limit = parse_limit(params.get("limit"))
    return await services.read(summarize, services.sync_engine(), window_, params.get("by"), limit)


async def reload(request: Request, principal: Principal) -> Any:
    services = request.app.state.services
    try:
        changed = await services.audited_reload(audit_api.origin(request, principal))
    except ConfigError as exc:
        raise InvalidRequest(f"the config file was not reloaded: {exc.message}", code="invalid_config") from exc
    return {"reloaded": True, "config_file": changed, "rules": services.rule_counts()}


async def own_usage(request: Request, principal: Principal) -> Any:
    """A caller's own key: its spend in the window and the budgets that apply to it. Never anyone else's rows."""
    if principal.key_id is None:
        raise NotFound("usage is per API key; this gateway runs open (no keys), see `margin report`")
    services, params = request.app.state.services, request.query_params
    known_query(params, USAGE_QUERY | {"user"})
    # no `since`: this month's start, checked against `until` as a given one is (an earlier `until` was zeros)
    this_month = window("month", datetime.now(UTC))[0]
    default = this_month.isoformat() if this_month is not None else None
    since, until = parse_span(params.get("since") or default, params.get("until"))  # inverted: a 400
    window_ = Window(since, until, key_id=principal.key_id)
    limit = parse_limit(params.get("limit"))
    subject = _usage_subject(services, principal, request.headers.get("x-margin-tags"), params.get("user"))
    async with services.key_reads.slot(None if principal.is_admin else principal.key_id):  # groups: its rows
        summary = await services.read(summarize, services.sync_engine(), window_, params.get("by"), limit)
    return {
        "key": {"id": principal.key_id, "name": principal.name, "team": principal.team},
        **summary,
        "budgets": await budget_status(services, subject),
    }


def _usage_subject(services: Any, principal: Principal, header: str | None, user: str | None) -> Subject:
    """The key as its requests' rules see it; with `x-margin-tags` (a value of a `customer=*` tag the key fills)
    and `?user=` (an end user), per-value and user budgets show that value's counter."""
    tags = {name: value for name, value in principal.tags.items() if value != EACH}
    if header:
        tags = dict(caller(principal, header, set(services.settings.tags.header_keys))[1].tags)
    if user is not None and not (0 < len(user) <= MAX_USER and user.isprintable()):
        raise InvalidRequest(f"user: 1 to {MAX_USER} printable characters", param="user")
    user_id = services.settle.pseudonym(user) if user is not None else None
    return Subject(principal.key_id, principal.team, principal.org, tags, user=user, user_id=user_id)


def routes() -> list[Route]:
    rule_routes = []
    for plural in KINDS:
        rule_routes += [
            Route(f"/admin/{plural}", endpoint(list_rules), methods=["GET"]),
            Route(f"/admin/{plural}", endpoint(put_rule, action="{kind}.put"), methods=["PUT", "POST"]),
            Route(
                f"/admin/{plural}/{{name:path}}",
                endpoint(delete_rule_route, action="{kind}.delete"),
                methods=["DELETE"],
            ),
        ]
    return [
        Route("/admin/keys", endpoint(list_keys), methods=["GET"]),
        Route("/admin/keys", endpoint(create_key, action="key.create"), methods=["POST"]),
        Route("/admin/keys/{key_id}", endpoint(revoke_key, action="key.revoke"), methods=["DELETE"]),
        Route("/admin/keys/{key_id}/rotate", endpoint(rotate_key, action="key.rotate"), methods=["POST"]),
        *rule_routes,
        Route("/admin/usage", endpoint(usage), methods=["GET"]),
        Route("/admin/reload", endpoint(reload, action="config.reload"), methods=["POST"]),
        Route("/admin/audit", endpoint(audit_api.list_entries), methods=["GET"]),
        Route("/v1/margin/usage", endpoint(own_usage, admin=False), methods=["GET"]),
    ]
