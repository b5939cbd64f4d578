"""`/dashboard`: server-rendered pages (Jinja2, inline SVG, one vendored stylesheet; no CDN, no JavaScript)
and the same data as JSON (`?format=json` or `/dashboard/api/<page>`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from margin import keys
from margin.api.edge import known_query
from margin.api.errors import NOSNIFF, error_response, json_response, status_of
from margin.dashboard import auth, charts, pages
from margin.dashboard.auth import Viewer
from margin.dashboard.queries import BREAKDOWNS, SINCE_CHOICES
from margin.economics.money import human_usd
from margin.errors import AuthenticationFailed, InvalidRequest, MarginError
from margin.ledger.read import Window
from margin.report.queries import GROUP_LIMIT, parse_limit

Builder = Callable[[Request, Viewer, Window], Awaitable[dict[str, Any]]]
T = TypeVar("T")
PAGES = ("overview", "breakdown", "latency", "savings", "budgets", "backends", "margin")
DEFAULT_SINCE = "7d"
HTML_ROWS = 200
"""Groups an HTML table shows (those that cost the most; the JSON lists GROUP_LIMIT): feature and customer tags are
the caller's, and rendering 10,000 rows held the event loop 0.7 s for a page no one reads."""
WINDOW_QUERY = frozenset({"since", "format"})
PAGE_QUERY: dict[str, frozenset[str]] = {
    name: WINDOW_QUERY | ({"by", "limit"} if name in ("breakdown", "margin") else set()) for name in PAGES
}
"""The query parameters each page reads (its builder's and `page`'s own): any other, or one given twice, is a
400 (`known_query`, as `/admin`'s reads), not a window or a table other than the one asked for."""
LOGIN_QUERY = frozenset({"next"})
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _engine(request: Request) -> Any:
    return request.app.state.services.sync_engine()


async def _read(request: Request, function: Callable[..., T], *args: Any) -> T:
    """A page's database work, on the read threads (margin.services.Services.read)."""
    result: T = await request.app.state.services.read(function, *args)
    return result


async def _overview(request: Request, who: Viewer, scope: Window) -> dict[str, Any]:
    settings = request.app.state.services.settings  # the gross margin of the viewer's own window
    return await _read(request, pages.overview, _engine(request), scope, settings)


async def _breakdown(request: Request, who: Viewer, scope: Window) -> dict[str, Any]:
    by = request.query_params.get("by", "model" if not who.full else "team")
    if by == "team":
        auth.require_full(who, "the table by team")
    limit = parse_limit(request.query_params.get("limit"))
    return await _read(request, pages.breakdown, _engine(request), scope, by, limit)


async def _latency(request: Request, who: Viewer, scope: Window) -> dict[str, Any]:
    return await _read(request, pages.latency, _engine(request), scope)


async def _savings(request: Request, who: Viewer, scope: Window) -> dict[str, Any]:
    return await _read(request, pages.savings, _engine(request), scope)


async def _budgets(request: Request, who: Viewer, scope: Window) -> dict[str, Any]:
    return await pages.budgets(request.app.state.services, who)


async def _backends(request: Request, who: Viewer, scope: Window) -> dict[str, Any]:
    return await pages.backends(request.app.state.services, scope, who.full)


async def _margin(request: Request, who: Viewer, scope: Window) -> dict[str, Any]:
    by = request.query_params.get("by", "feature")  # a team key sees its own team's P&L
    if by not in ("feature", "customer"):
        raise InvalidRequest("by must be feature or customer", param="by")
    settings, limit = request.app.state.services.settings, parse_limit(request.query_params.get("limit"))
    return await _read(request, pages.margin_page, _engine(request), scope, settings, by, limit)


BUILDERS: dict[str, Builder] = {
    "overview": _overview,
    "breakdown": _breakdown,
    "latency": _latency,
    "savings": _savings,
    "budgets": _budgets,
    "backends": _backends,
    "margin": _margin,
}


def _fmt_int(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    number = float(value)
    if number == 0:
        return "0"
    return f"{number:,.0f}" if abs(number) >= 1000 else f"{number:.{digits}g}"


def _fmt_pct(value: Any) -> str:
    if value is None:
        return "-"
    number = float(value)
    if 0 < number < 0.01:
        return "<0.01 %"
    return f"{number:,.2f} %"


def _fmt_ratio(value: Any) -> str:
    """A ratio as a decimal string (`0.912345`) → `91.23 %`."""
    return "-" if value is None else f"{Decimal(value) * 100:,.2f} %"


def _fmt_when(value: str | None) -> str:
    """ISO timestamp → `2026-12-01 00:00 UTC` (the JSON keeps the full ISO form)."""
    if not value:
        return "-"
    return f"{value[:10]} {value[11:16]} UTC"


def _trend_points(points: list[dict[str, Any]], field: str) -> list[tuple[str, float, str]]:
    if field == "cost_usd":
        return [(p["bucket"], float(p["cost_usd"]), human_usd(p["cost_usd"])) for p in points]
    return [(p["bucket"], float(p[field]), _fmt_int(p[field])) for p in points]


class Dashboard:
    """Templates and stylesheet loaded once per app (no module-level state)."""

    def __init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("margin.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters.update(
            usd=human_usd, int=_fmt_int, num=_fmt_num, when=_fmt_when, pct=_fmt_pct, ratio=_fmt_ratio
        )
        self.env.globals.update(
            bar_chart=charts.bar_chart,
            meter=charts.meter,
            trend_points=_trend_points,
            since_choices=SINCE_CHOICES,
            breakdowns=BREAKDOWNS,
            max_rows=HTML_ROWS,
            json_cap=GROUP_LIMIT,
        )
        self.css = (resources.files("margin.dashboard") / "static" / "dashboard.css").read_bytes()

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def page(self, name: str, api: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            as_json = api or request.query_params.get("format") == "json"
            since = request.query_params.get("since", DEFAULT_SINCE)
            who: Viewer | None = None
            try:
                who = await auth.viewer(request)
                known_query(request.query_params, PAGE_QUERY[name])
                async with request.app.state.services.key_reads.slot(None if who.full else who.principal.key_id):
                    scope = await _read(request, pages.scope_for, _engine(request), who, since)
                    data = await BUILDERS[name](request, who, scope)
            except AuthenticationFailed as exc:
                if as_json:
                    return error_response(exc)
                target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="")
                return RedirectResponse(f"/dashboard/login?next={target}", status_code=303)
            except MarginError as exc:
                if as_json:
                    return error_response(exc)
                return self.render("error.html", status_of(exc), page=name, who=who, since=since, error=exc.message)
            body = {
                "page": name,
                "since": since,
                "window_start": scope.since.isoformat() if scope.since else None,
                "viewer": who.label,
                "team": who.team,
                **data,
            }
            if as_json:
                return json_response(body, headers={"cache-control": "no-store"})
            return self.render(f"{name}.html", page=name, who=who, data=body, since=since, query=request.query_params)

        return run

    async def login_form(self, request: Request) -> Response:
        nxt = auth.safe_next(request.query_params.get("next"))
        return self.render("login.html", page="login", who=None, since=DEFAULT_SINCE, error=None, next=nxt)

    def _login_page(self, status: int, nxt: str, error: str) -> HTMLResponse:
        return self.render("login.html", status, page="login", who=None, since=DEFAULT_SINCE, next=nxt, error=error)

    async def login(self, request: Request) -> Response:
        nxt = auth.safe_next(request.query_params.get("next"))
        if not auth.same_origin(request):
            return self._login_page(403, nxt, "Login must be posted from this gateway's own page.")
        services = request.app.state.services
        try:
            principal = await auth.principal_for(services.keys, await auth.form_key(request) or None)
        except MarginError as exc:
            return self._login_page(status_of(exc), nxt, exc.message)
        response = RedirectResponse(nxt, status_code=303)
        if principal.key_id is not None:  # open mode needs no session
            secure = services.settings.server.secure_cookies
            secure = request.url.scheme == "https" if secure is None else secure
            auth.set_login_cookie(response, services.sessions.issue(principal.key_id), secure=secure)
        return response

    async def logout(self, request: Request) -> Response:
        if not auth.same_origin(request):
            return self._login_page(403, "/dashboard", "Logout must be posted from this gateway's own page.")
        services = request.app.state.services
        session = services.sessions.read(request.cookies.get(auth.COOKIE) or "")
        record = None if session is None else await services.keys.lookup_id(session.key_id)
        # a live session's key's sessions end on the server too: a copy of this cookie is refused. One already
        # ended (a replayed cookie) changes nothing: before, each replay wrote and emptied every process's key cache
        if (
            session is not None
            and record is not None
            and not record.session_ended(session.issued_ms, datetime.now(UTC))
        ):
            now_ms = int(time.time() * 1000)
            await services.read(keys.end_sessions, services.sync_engine(), session.key_id, now_ms)
            await services.keywatch.changed()
        response = RedirectResponse("/dashboard/login", status_code=303)
        auth.clear_login_cookie(response)
        return response

    async def stylesheet(self, request: Request) -> Response:
        return Response(
            self.css, media_type="text/css", headers={"cache-control": "max-age=3600", NOSNIFF[0]: NOSNIFF[1]}
        )

    def routes(self) -> list[Route]:
        paths = {"overview": "/dashboard"} | {name: f"/dashboard/{name}" for name in PAGES if name != "overview"}
        out = [
            Route("/dashboard/login", strict(self.login_form, LOGIN_QUERY), methods=["GET"]),
            Route("/dashboard/login", strict(self.login, LOGIN_QUERY), methods=["POST"]),
            Route("/dashboard/logout", strict(self.logout, frozenset()), methods=["POST"]),
            Route("/dashboard/static/dashboard.css", strict(self.stylesheet, frozenset()), methods=["GET"]),
        ]
        for name, path in paths.items():
            out.append(Route(path, self.page(name), methods=["GET"]))
            out.append(Route(f"/dashboard/api/{name}", self.page(name, api=True), methods=["GET"]))
        return out


def strict(
    handler: Callable[[Request], Awaitable[Response]], allowed: frozenset[str]
) -> Callable[[Request], Awaitable[Response]]:
    """`handler` behind `known_query` (a page checks its own, after its viewer, to answer in its format): an
    unknown or repeated parameter is a 400 in the error JSON, before the handler reads anything."""

    async def run(request: Request) -> Response:
        try:
            known_query(request.query_params, allowed)
        except InvalidRequest as exc:
            return error_response(exc)
        return await handler(request)

    return run


def routes() -> list[Route]:
    return Dashboard().routes()
