"""Every answer margin's own app makes carries `X-Content-Type-Options: nosniff`, so a browser never sniffs one
(JSON holding a caller's key name, an uploaded batch file) as HTML or script: against a running gateway, the
admin API (answers and refusals), the models list, health, OpenAPI, metrics, the dashboard's JSON, batch file
content, and the error answers of every route (unknown route, wrong method, edge refusal, inference errors
before and inside the pipeline). Before, only the dashboard's HTML pages had it."""

from __future__ import annotations

import httpx

from tests.security.conftest import ServeFactory

HOSTILE = "<script>alert(1)</script>"


def _sniffless(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers.get("x-content-type-options") == "nosniff", (response.request.url, response.headers)


def test_admin_and_error_answers_are_never_sniffed(served: ServeFactory) -> None:
    with served(keys={"admin": ["--admin"], "user": []}) as gw:
        with gw.client(gw.keys["admin"]) as admin:
            _sniffless(admin.post("/admin/keys", json={"name": HOSTILE}), 201)
            for path in ("/admin/keys", "/admin/budgets", "/admin/usage", "/admin/backends", "/metrics"):
                _sniffless(admin.get(path), 200)
            for path in ("/v1/models", "/v1/models/fake-chat", "/healthz", "/readyz", "/openapi.json"):
                _sniffless(admin.get(path), 200)
            _sniffless(admin.get("/dashboard/api/overview"), 200)
            _sniffless(admin.post("/admin/limits", json={"name": 1}), 400)
            _sniffless(admin.delete("/admin/keys/nope"), 404)
            _sniffless(admin.get("/admin/nowhere"), 404)
            _sniffless(admin.put("/admin/keys", json={}), 405)
            _sniffless(admin.post("/admin/keys", content=b"{}", headers={"content-type": "text/plain"}), 415)
            chat = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
            _sniffless(admin.post("/v1/chat/completions", json=chat), 404)  # refused inside the pipeline
            broken = admin.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
            _sniffless(broken, 400)  # refused before it
            uploaded = admin.post("/v1/files", files={"file": ("x.jsonl", b"<html>\n")}, data={"purpose": "batch"})
            _sniffless(uploaded, 200)
            _sniffless(admin.get(f"/v1/files/{uploaded.json()['id']}/content"), 200)
        with gw.client(gw.keys["user"]) as user:
            _sniffless(user.get("/admin/keys"), 403)
            _sniffless(user.get("/v1/margin/usage"), 200)
        with gw.client() as nobody:
            _sniffless(nobody.get("/admin/keys"), 401)
            _sniffless(nobody.get("/dashboard/api/overview"), 401)
