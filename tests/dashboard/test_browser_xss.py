"""Values a caller or an admin chooses (team and key names, feature and customer tags, model and backend names
as the ledger holds them), made of HTML and script, shown on every dashboard page in a real browser (headless
Chromium): none of them runs. Each payload would set `window.__xss` or open a dialog if it ran; the page's
Content-Security-Policy would refuse an inline script that reached the DOM, and the refusal is a console error,
so the test fails on a payload that got through the escaping even where the policy stopped it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from margin import keys
from margin.app import build_app
from margin.ledger import db, ingest
from tests.dashboard.conftest import _ServerThread
from tests.dashboard.seed import REVENUE, row, seed
from tests.helpers import fake_settings

PAYLOADS = (
    "<script>window.__xss=1;alert(1)</script>",
    '"><img src=x onerror="window.__xss=2;alert(2)">',
    "'><svg onload=alert(3)>",
    "</title><script>alert(4)</script>",
    "javascript:alert(5)",
)
PAGES = ("", "/breakdown", "/breakdown?by=team", "/breakdown?by=feature", "/breakdown?by=customer",
         "/breakdown?by=model", "/breakdown?by=backend", "/latency", "/savings", "/budgets", "/backends",
         "/margin", "/margin?by=customer")  # fmt: skip


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    db_path = tmp_path_factory.mktemp("xss") / "ledger.db"
    made = seed(db_path)
    engine = db.make_sync_engine(f"sqlite:///{db_path}")
    rows = [
        row(900 + n, team=text, model=text, backend=text, tags={"feature": text, "customer": text})
        for n, text in enumerate(PAYLOADS)
    ]
    with engine.begin() as connection:
        ingest.ingest_batch(connection, rows)
    made["team"] = keys.create_key(engine, keys.NewKey(PAYLOADS[1], PAYLOADS[0], {}, None, False, None))[1]
    made["solo"] = keys.create_key(engine, keys.NewKey(PAYLOADS[0], None, {}, None, False, None))[1]
    engine.dispose()
    budgets = [{"name": "xss", "scope": {"kind": "team", "value": PAYLOADS[1]}, "usd": "10", "period": "month"}]
    server = _ServerThread(build_app(fake_settings(db_path, budgets=budgets, revenue=REVENUE)))
    server.start()
    server.ready.wait(30)
    if server.error is not None or not server.url:
        pytest.fail(f"the live gateway did not start: {server.error!r}")
    try:
        yield server.url, made
    finally:
        server.stop.set()
        server.join(30)


def seen(dialogs: list[str], dialog: Any) -> None:
    """A dialog a payload opened: noted, then closed (an open one would hold the page)."""
    dialogs.append(dialog.message)
    dialog.dismiss()


def test_no_ledger_or_key_value_runs_as_script_on_any_page(browser: Any, hostile: tuple[str, dict[str, str]]) -> None:
    url, made = hostile
    dialogs: list[str] = []
    errors: list[str] = []
    for who in ("admin", "team", "solo"):
        context = browser.new_context()
        context.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        try:
            page = context.new_page()
            page.on("dialog", lambda dialog: seen(dialogs, dialog))
            page.goto(url + "/dashboard/login")
            page.fill("#key", made[who])
            page.click("#login")
            page.wait_for_load_state()
            for path in PAGES:
                page.goto(url + "/dashboard" + path)
                assert page.evaluate("window.__xss === undefined"), (who, path)
                body = page.content()
                assert "<script>window.__xss" not in body and "<svg onload" not in body, (who, path)
            for value in PAYLOADS:  # echoed query values: the error page and the login form's `next`
                page.goto(url + "/dashboard/breakdown?by=" + quote(value) + "&since=" + quote(value))
                page.goto(url + "/dashboard/login?next=" + quote("/dashboard" + value))
                assert page.evaluate("window.__xss === undefined"), (who, value)
        finally:
            context.close()
    assert dialogs == []
    refused = ("status of 400", "status of 403")  # the pages a team key may not see, the bad `by` and `since`
    assert [e for e in errors if not any(code in e for code in refused)] == [], errors
