"""GET /metrics and GET /admin/backends: admin keys only when keys exist, what they show after requests,
and metrics that can be turned off."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from margin import keys
from margin.ledger import db
from tests.helpers import fake_settings, gateway

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "a b c"}]}


def _keys(db_path: Path) -> tuple[str, str]:
    url = f"sqlite:///{db_path}"
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    _, user = keys.create_key(engine, keys.NewKey("user", "t", {}, None, False, None))
    _, admin = keys.create_key(engine, keys.NewKey("root", None, {}, None, True, None))
    engine.dispose()
    return user, admin


async def test_metrics_and_backends_need_an_admin_key(db_path: Path) -> None:
    user, admin = _keys(db_path)
    async with gateway(fake_settings(db_path)) as gw:
        auth = {"authorization": f"Bearer {user}"}
        assert (await gw.http.post("/v1/chat/completions", json=CHAT, headers=auth)).status_code == 200
        for path in ("/metrics", "/admin/backends"):
            assert (await gw.http.get(path)).status_code == 401
            refused = await gw.http.get(path, headers=auth)
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        scraped = await gw.http.get("/metrics", headers={"authorization": f"Bearer {admin}"})
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
        requests = [s for s in families["margin_requests"].samples if s.name == "margin_requests_total"]
        assert [(s.labels["model"], s.labels["status"], s.value) for s in requests] == [("fake-chat", "ok", 1.0)]
        circuit = {s.labels["backend"]: s.value for s in families["margin_backend_circuit_state"].samples}
        assert circuit == {"fake": 0.0, "api": 0.0}
        assert "margin_ledger_pending_rows" in families


async def test_backends_show_circuit_latency_and_limits(db_path: Path) -> None:
    settings = fake_settings(
        db_path,
        backends={
            "fake": {"kind": "fake", "output_tokens": 2},
            "up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "first_token_timeout_s": 3},
        },
        models={"fake-chat": {"backend": "fake", "aliases": ["fc"]}, "remote": {"backend": "up"}},
    )
    async with gateway(settings) as gw:  # open mode: the loopback operator
        for _ in range(3):
            assert (await gw.http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        body = (await gw.http.get("/admin/backends")).json()
    by_name = {entry["name"]: entry for entry in body["data"]}
    fake = by_name["fake"]
    assert "fake-chat" in fake["models"] and fake["circuit"]["state"] == "closed"
    assert fake["circuit"]["ok"] == 3 and fake["latency_ms"]["recent"] == 3 and fake["latency_ms"]["p50"] >= 0
    assert by_name["up"]["limits"]["first_token_timeout_s"] == 3 and by_name["up"]["retries"]["attempts"] == 2
    assert body["breaker"] == {"failures": 5, "cooldown_s": 30.0} and body["pid"] > 0


async def test_metrics_can_be_turned_off(db_path: Path) -> None:
    async with gateway(fake_settings(db_path, telemetry={"metrics": False})) as gw:
        assert (await gw.http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await gw.http.get("/metrics")).status_code == 404
