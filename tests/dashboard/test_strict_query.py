"""Every `/dashboard` route refuses a query parameter it does not read, or one given twice, with a 400 (as
`/admin` does, through the same `known_query`): over real HTTP, for every dashboard route the app has, so a
route added later cannot skip the check (before, `?sinse=24h` was ignored and the page showed 7 days)."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.routing import Route

from margin.app import build_app
from tests.dashboard.seed import seed
from tests.helpers import fake_settings, live_server

REPEATED = {"/dashboard/login": "next"}  # a parameter each route reads, sent twice (pages: `since`)


def dashboard_routes(app: object) -> list[tuple[str, str]]:
    found = [
        (method, route.path)
        for route in getattr(app, "routes", [])
        if isinstance(route, Route) and route.path.startswith("/dashboard")
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]
    assert len(found) >= 18, found  # 7 pages × (HTML, JSON), login × 2, logout, stylesheet
    return found


def assert_refused(response: httpx.Response, param: str, path: str) -> None:
    assert response.status_code == 400, (path, response.status_code, response.text[:200])
    if response.headers["content-type"].startswith("application/json"):
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error", error
        assert error["param"] == param, error
    else:  # an HTML page answers with its error page, the same message
        assert response.headers["content-type"].startswith("text/html"), response.headers
        assert param in response.text and (
            "unknown query parameter" in response.text or "more than once" in response.text
        )


async def test_every_dashboard_route_refuses_unknown_and_repeated_parameters(db_path: Path) -> None:
    made = seed(db_path)
    app = build_app(fake_settings(db_path))
    admin = {"authorization": f"Bearer {made['admin']}"}
    async with live_server(app) as url, httpx.AsyncClient(base_url=url, headers=admin) as http:
        for method, path in dashboard_routes(app):
            unknown = await http.request(method, path, params=[("sinse", "24h")])
            assert_refused(unknown, "sinse", path)
            name = REPEATED.get(path, "since")
            repeated = await http.request(method, path, params=[(name, "24h"), (name, "7d")])
            assert_refused(repeated, name, path)
        read = {"since": "24h", "by": "feature", "limit": "5"}  # what the pages read: still answered
        for path, params in (
            ("/dashboard", {"since": "24h"}),
            ("/dashboard/api/breakdown", read),
            ("/dashboard/margin", read),
        ):
            good = await http.get(path, params=params)
            assert good.status_code == 200, (path, good.text[:200])
        assert (await http.get("/dashboard/api/overview", params={"since": "24h", "format": "json"})).status_code == 200
        assert (await http.get("/dashboard/login", params={"next": "/dashboard"})).status_code == 200
