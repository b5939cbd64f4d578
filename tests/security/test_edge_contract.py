"""Issue 13 §6, the API as a contract: `GET /openapi.json` documents every public route from the schemas the
routes validate with, and schemathesis throws generated valid and invalid requests at a live gateway with a
bounded example budget: no 5xx, and every 4xx is OpenAI-shaped (Anthropic-shaped under `/v1/messages`).

`MARGIN_API_EXAMPLES` raises the budget for a deeper run (default 8 examples per operation and mode)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.security.conftest import ServeFactory

if TYPE_CHECKING:
    from schemathesis.core.result import Ok
    from schemathesis.schemas import APIOperation
    from starlette.routing import Route

EXAMPLES = int(os.environ.get("MARGIN_API_EXAMPLES", "8"))
ERROR_KEYS = {"message", "type", "param", "code"}


def anthropic_shaped(body: Any) -> bool:
    """Anthropic's error JSON (what `/v1/messages` answers errors with)."""
    if not isinstance(body, dict) or set(body) != {"type", "error"} or body["type"] != "error":
        return False
    error = body["error"]
    return isinstance(error, dict) and set(error) == {"type", "message"} and bool(error["message"])


def openai_shaped(body: Any) -> bool:
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return False
    error = body["error"]
    return (
        set(error) == ERROR_KEYS
        and isinstance(error["message"], str)
        and bool(error["message"])
        and isinstance(error["type"], str)
        and all(error[k] is None or isinstance(error[k], str) for k in ("param", "code"))
    )


def _routes(app_routes: list[Any]) -> set[tuple[str, str]]:
    out = set()
    for route in app_routes:
        for method in route.methods or ():
            if method != "HEAD":
                out.add((method.lower(), route.path.replace(":path}", "}")))
    return out


def test_openapi_documents_every_public_route(served: ServeFactory) -> None:
    """`GET /openapi.json`: an OpenAPI 3.1 document whose paths are exactly the gateway's API routes."""
    from margin.app import build_app
    from margin.config import parse_settings
    from tests.security.conftest import FAKE_CONFIG

    with served() as gw, gw.client() as client:
        document = client.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    app = build_app(parse_settings(FAKE_CONFIG))
    html = {"/dashboard", "/dashboard/login", "/dashboard/logout", "/dashboard/static/dashboard.css"}
    routes = cast("list[Route]", app.routes)  # all Routes: starlette lists them as BaseRoute, which has no path
    pages = {p for p in (r.path for r in routes) if p.startswith("/dashboard/")}
    public = {(m, p) for m, p in _routes(routes) if p not in html and p not in pages}
    public.add(("get", "/dashboard/api/{page}"))  # the pages' JSON, one operation with an enum
    assert documented == public
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])  # from margin.protocol, not written by hand


def test_schemathesis_finds_no_5xx_and_only_openai_shaped_4xx(served: ServeFactory) -> None:
    """Generated requests (valid and invalid) at every documented operation of a live gateway with keys."""
    with served(keys={"admin": ["--admin"]}) as gw:
        schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
        headers = {"authorization": f"Bearer {gw.keys['admin']}"}
        statuses: dict[int, int] = {}
        operations = 0
        for result in schema.get_all_operations():
            # an invalid operation (Err, which has no ok()) fails the test here
            operation = cast("Ok[APIOperation[Any, Any, Any, Any]]", result).ok()
            operations += 1
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def attack(case: Any) -> None:
                    response = case.call(base_url=gw.url, headers=headers, timeout=30)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
                    if response.status_code >= 400:
                        shaped = anthropic_shaped if case.path.startswith("/v1/messages") else openai_shaped
                        assert shaped(response.json()), (case.as_curl_command(), response.text[:500])
                    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

                try:
                    attack()
                except Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to make invalid (no input)
        document = schema.raw_schema
        documented = sum(len(item) for path, item in document["paths"].items() if path != "/openapi.json")
        assert operations == documented  # schemathesis leaves out the document's own route
        print("statuses", sorted(statuses.items()))
        assert sum(v for k, v in statuses.items() if k < 300) > 0  # some requests got through, not only 4xx
