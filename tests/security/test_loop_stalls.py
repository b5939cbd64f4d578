"""No request may stall others: inputs whose cost grows faster than their size are refused before the work,
or the work runs where the event loop does not wait for it. Each attack runs against a real `margin serve`
while another client polls `/readyz`; the bound on its wait (seconds) is far below what the attack cost
before the fix and far above a healthy answer (milliseconds), so the machine's load does not decide it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import psycopg
import pytest

from tests.helpers import cpu_seconds, peak_rss
from tests.security.conftest import ServeFactory
from tests.security.waiting import wait_for, watched

FEEDBACK = "/v1/margin/feedback"
CHAT = "/v1/chat/completions"


def test_a_feedback_value_with_a_huge_exponent_is_refused_before_any_arithmetic(served: ServeFactory) -> None:
    """`value: "1e400000"` is a finite Decimal; turning it into integer nano-USD took 7 s of the event loop
    (26 s for 1e999990) and ended in a 500. Amounts past what the ledger holds (±9e9 USD) are refused at
    once, each item of a batch before the next is read; the largest that fits is taken."""
    with served(keys={"user": []}) as gw, gw.client(gw.keys["user"], timeout=5) as client:
        chat = client.post(CHAT, json={"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]})
        request_id = chat.headers["x-margin-request-id"]
        with watched(gw.url) as waits:
            for value in ("1e400000", "-1e999990", "9000000000.000000001", 1e300):
                refused = client.post(FEEDBACK, json={"request_id": request_id, "success": True, "value": value})
                assert refused.status_code == 400 and refused.json()["error"]["param"] == "value", value
            batch = [{"request_id": request_id, "value": "1e400000"}] * 3
            assert client.post(FEEDBACK, json={"outcomes": batch}).status_code == 400
        assert max(waits, default=0.0) < 1.0
        taken = client.post(FEEDBACK, json={"request_id": request_id, "success": True, "value": "9000000000"})
        assert taken.status_code == 200, taken.text


def _local_model(overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        "backends": {"local": {"kind": "llamacpp", "n_ctx": 1024}},  # the builtin SmolLM2
        "models": {"smollm2": {"backend": "local"}},
        **overrides,
    }


@pytest.mark.integration
def test_a_long_prompt_is_tokenized_off_the_event_loop(served: ServeFactory) -> None:
    """With a budget, admission counts a prompt's tokens with the model's tokenizer first. llama.cpp takes
    ~0.5 s a MiB of text, all of it on the event loop before: three 3.5 MiB prompts at once held `/readyz` for
    seconds. Now a long text is counted in a worker thread (llama.cpp releases the GIL), and the prompts are
    refused as longer than the context."""
    budgets = {"budgets": [{"name": "all", "scope": {"kind": "global"}, "usd": "100", "period": "day"}]}
    overrides = _local_model(budgets)
    prompt = "lorem ipsum dolor sit amet " * (3_500_000 // 27)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    with served(overrides) as gw, gw.client(timeout=60) as client:
        results: list[int] = []
        attackers = [
            threading.Thread(target=lambda: results.append(client.post(CHAT, json=body).status_code)) for _ in range(3)
        ]
        with watched(gw.url) as waits:
            time.sleep(0.2)
            for attacker in attackers:
                attacker.start()
            for attacker in attackers:
                attacker.join()
        assert len(results) == 3 and all(400 <= status < 500 for status in results), results
        assert len(waits) > 5 and max(waits) < 1.0, max(waits)


def test_large_prompts_wait_for_the_guard_in_a_bounded_queue(served: ServeFactory) -> None:
    """Large prompts are scanned for PII on one worker thread, in turn. Twelve of ~0.8 MiB at once, with room
    for two in the queue: the rest are refused at once with 503 `guard_busy` and `Retry-After: 1` (before,
    every one queued, and a small request's scan waited behind all of them); `/readyz` stays quick."""
    overrides = {"policies": {"default": {"pii": "redact"}}, "guard": {"max_queued_scans": 2}}
    prompt = "lorem ipsum dolor sit amet " * 30_000 + "mail jo@example.com"
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": prompt}]}
    with served(overrides) as gw, gw.client(timeout=120) as client:
        replies: list[tuple[int, str | None, str | None]] = []

        def attack() -> None:
            reply = client.post(CHAT, json=body)
            code = reply.json().get("error", {}).get("code") if reply.status_code != 200 else None
            replies.append((reply.status_code, code, reply.headers.get("retry-after")))

        attackers = [threading.Thread(target=attack) for _ in range(12)]
        with watched(gw.url) as waits:
            for attacker in attackers:
                attacker.start()
            for attacker in attackers:
                attacker.join()
    served_ok = [reply for reply in replies if reply[0] == 200]
    refused = [reply for reply in replies if reply[0] != 200]
    assert len(served_ok) >= 2 and refused and set(refused) == {(503, "guard_busy", "1")}, replies
    assert max(waits) < 1.0, max(waits)


def test_a_text_that_normalization_multiplies_is_refused_not_multiplied(served: ServeFactory) -> None:
    """The injection rules read the text normalized per character (NFKC), which makes 18 characters of one
    U+FDFA. One message of 1,000,000 of them (2.9 MiB, under `guard.max_scan_chars`) kept the guard's worker
    busy 9.7 s and grew the gateway by 1.6 GiB, and `/readyz` waited 1.4 s. What normalizing adds to a text
    now counts against `guard.max_scan_chars`, summed before any normalized text is built: as for any text
    over the cap, a key whose policy blocks injections is answered 413 `guard_scan_limit` and one whose policy
    only logs them is served, its ledger row recording `scan_limit`; both at once, the gateway barely grows."""
    keys = {"logger": [], "blocker": ["--policy", json.dumps({"injection": "block"})]}
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "\ufdfa" * 1_000_000}]}
    replies: dict[str, tuple[int, str | None, float]] = {}
    with served({"policies": {"default": {"injection": "log"}}}, keys=keys) as gw:
        with watched(gw.url) as waits, peak_rss(gw.process.pid) as sizes:
            time.sleep(0.1)
            for name in ("logger", "blocker"):
                with gw.client(gw.keys[name], timeout=120) as client:
                    started = time.perf_counter()
                    reply = client.post(CHAT, json=body)
                    code = reply.json().get("error", {}).get("code") if reply.status_code != 200 else None
                    replies[name] = (reply.status_code, code, time.perf_counter() - started)
        grown_mib = (sizes[1] - sizes[0]) >> 10
    assert replies["logger"][:2] == (200, None) and replies["blocker"][:2] == (413, "guard_scan_limit"), replies
    assert max(took for _, _, took in replies.values()) < 3.0, replies
    assert grown_mib < 200, f"the gateway grew by {grown_mib} MiB"
    assert max(waits) < 1.0, max(waits)
    logged = [row for row in gw.rows() if row.status == "ok"]
    guard = json.loads(logged[0].guard) if isinstance(logged[0].guard, str) else logged[0].guard
    assert len(logged) == 1 and "normalized" in guard["scan_limit"], guard


def _closing(prefix: bytes) -> bytes:
    """What closes the brackets `prefix` left open (its strings hold no brackets)."""
    opened: list[bytes] = []
    for char in prefix.decode():
        if char in "[{":
            opened.append(b"]" if char == "[" else b"}")
        elif char in "]}":
            opened.pop()
    return b"".join(reversed(opened))


def _filled(prefix: bytes, item: bytes, suffix: bytes, size: int) -> bytes:
    """A body of about `size` bytes: `prefix`, `item` repeated (comma-separated), `suffix`."""
    return prefix + b",".join([item] * ((size - len(prefix) - len(suffix)) // (len(item) + 1))) + suffix


ONE = b'{"model":"fake-chat","messages":[{"role":"user","content":"x"}],'
BODIES = {  # path, the body up to its list, the list's element (repeated ~0.3-2 million times, under 4 MiB)
    "chat messages that are not objects": (CHAT, b'{"model":"fake-chat","messages":[', b"[]"),
    "content parts without a type": (CHAT, b'{"model":"fake-chat","messages":[{"role":"user","content":[', b"{}"),
    "stop sequences that are not strings": (CHAT, ONE + b'"stop":[', b"1"),
    "tools that are not objects": (CHAT, ONE + b'"tools":[', b"1"),
    "a prompt of objects": ("/v1/completions", b'{"model":"fake-chat","prompt":[', b"{}"),
    "embedding inputs of objects": ("/v1/embeddings", b'{"model":"fake-embed","input":[', b"{}"),
    "token-id lists with a negative id": ("/v1/embeddings", b'{"model":"fake-embed","input":[[', b"-1"),
    "valid minimal messages": (CHAT, b'{"model":"fake-chat","messages":[', b'{"role":"user"}'),
    "valid token-id prompts": ("/v1/completions", b'{"model":"fake-chat","prompt":[', b"[1]"),
    "a key's jurisdictions (admin API)": ("/admin/keys", b'{"name":"k","policy":{"jurisdictions":[', b"1"),
}


# The body's cost is read as the gateway's CPU time (/proc), which a loaded machine barely changes; the bound on
# /readyz's waits keeps the rule that no request stalls the others, at a wall time a loaded machine's healthy
# gateway stays well under (it was 1 s: a 2.9 s wait failed it once). Measured on a 2-core machine running
# other test suites (load 5-10): this tree, CPU 0.05-0.21 s and waits 0.19-0.88 s; the tree before the list
# limits (2dfe16f^), CPU 4.8-11.7 s (or the client's 60 s ran out) and waits 14-50 s for the wrong elements,
# 1.5 and 4.8 s for the valid ones (answered 200 then).
BODY_CPU_S, STALL_S = 1.0, 5.0


@pytest.mark.parametrize("name", list(BODIES))
def test_a_body_of_millions_of_elements_is_refused_before_they_are_validated(served: ServeFactory, name: str) -> None:
    """pydantic validates every element of a list, and for a list of wrong elements collects one error each
    (for each member of a union): a 4 MiB body of 1-4 million small elements took seconds of the event loop
    (`{"messages": [[], [], …]}` held `/readyz` 14.7 s; `{"prompt": [{}, {}, …]}` validated for 20 s), and a
    valid one of 262,144 minimal messages 0.4 s. Each list a request may hold has a length limit (no element
    past it is validated) and stops at its first wrong element: 400 naming the field, `/readyz` answers, and
    the refusal costs the gateway little CPU (a first small body on the same path does the path's one-off work
    before it is measured)."""
    path, prefix, item = BODIES[name]
    closing = _closing(prefix)
    body = _filled(prefix, item, closing, 4 * 1024 * 1024 - 1024)
    caller, json_body = "admin" if path.startswith("/admin/") else "user", {"content-type": "application/json"}
    with served(keys={"user": [], "admin": ["--admin"]}) as gw, gw.client(gw.keys[caller], timeout=60) as client:
        client.post(path, content=prefix + item + closing, headers=json_body)  # the path's first use, apart
        before = cpu_seconds(gw.process.pid)
        with watched(gw.url) as waits:
            refused = client.post(path, content=body, headers=json_body)
        spent = cpu_seconds(gw.process.pid) - before
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"], refused.text
        assert spent < BODY_CPU_S, f"the refusal took {spent:.2f} s of the gateway's CPU"
        assert max(waits) < STALL_S, max(waits)


LOCKED = "ledger, ledger_hourly, ledger_daily, ledger_latency, ledger_attach, ledger_tasks, ledger_task_daily"
ROUTED = {  # threshold 0: the router scores every prompt (in a worker thread) and picks the cheap model
    "backends": {"cheap": {"kind": "fake", "output_tokens": 3}, "strong": {"kind": "fake", "output_tokens": 3}},
    "models": {"cheap": {"backend": "cheap"}, "strong": {"backend": "strong"}},
    "routes": {"auto": {"ladder": ["cheap", "strong"], "threshold": 0.0}},
}


def test_slow_reads_do_not_take_the_request_paths_threads(served: ServeFactory, fresh_postgres: str) -> None:
    """The dashboard's, the admin API's and feedback's database work ran on asyncio's default executor (6
    threads on 2 cores), which the request path shares: the router's scorer of every routed request, the
    tokenizer of long prompts, the text of long streams. With the ledger's tables locked (a rebuild, a
    `VACUUM FULL`, a migration), a dozen dashboard requests held every one of those threads, and a routed
    chat waited as long as the lock lasted. Those reads now have threads of their own."""
    keys = {"admin": ["--admin"], "user": []}
    with served(ROUTED, keys=keys, ledger=fresh_postgres) as gw, psycopg.connect(_libpq(fresh_postgres)) as lock:
        with gw.client(gw.keys["user"], timeout=60) as client:  # the router loaded before the test starts
            assert client.post(CHAT, json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).is_success
        lock.execute(f"LOCK TABLE {LOCKED} IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
        statuses: list[int] = []

        def dashboard() -> None:
            with gw.client(gw.keys["admin"], timeout=120) as client:
                statuses.append(client.get("/dashboard/api/overview").status_code)

        readers = [threading.Thread(target=dashboard) for _ in range(12)]
        for reader in readers:
            reader.start()
        time.sleep(1.5)  # every reader waits for the lock
        with gw.client(gw.keys["user"], timeout=60) as client:
            started = time.perf_counter()
            chat = client.post(CHAT, json={"model": "auto", "messages": [{"role": "user", "content": "hello"}]})
            took = time.perf_counter() - started
        assert statuses == []  # the readers were still waiting while the chat ran
        lock.rollback()
        for reader in readers:
            reader.join()
    assert chat.status_code == 200 and chat.json()["model"] == "cheap" and took < 5.0, (chat.status_code, took)
    assert statuses == [200] * 12


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg", "postgresql")


@pytest.mark.parametrize(
    ("path", "flags"),
    [
        ("/v1/margin/usage?since=0001-01-02", []),  # a key's own rows over all of history (no rollup answers)
        ("/dashboard/api/overview?since=30d", ["--team", "growth"]),  # a team's pages
    ],
)
def test_one_keys_reads_leave_read_threads_to_everyone_else(
    served: ServeFactory, fresh_postgres: str, path: str, flags: list[str]
) -> None:
    """Any key may read its own usage (and its team's dashboard) over any window, and every read took one of
    the read threads (4) until it ended, however many the key sent: eight requests of one key whose scans are
    slow (a year of a busy key's rows; here the ledger's tables, locked) held every thread and queued the rest,
    and the operators' admin API and dashboard, every other key's usage and everyone's feedback waited as long
    (here: for ever). One key now runs one such read at a time, lets 4 more wait and is refused past that."""
    keys = {"admin": ["--admin"], "user": flags}
    with served(keys=keys, ledger=fresh_postgres) as gw, psycopg.connect(_libpq(fresh_postgres)) as lock:
        lock.execute(f"LOCK TABLE {LOCKED} IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
        statuses: list[int] = []

        def read() -> None:
            with gw.client(gw.keys["user"], timeout=120) as client:
                statuses.append(client.get(path).status_code)

        readers = [threading.Thread(target=read) for _ in range(8)]
        for reader in readers:
            reader.start()
        # past 1 running and 4 waiting, three are refused at once: all eight are in (a fixed 1.5 s was waited
        # here, and a reader a loaded machine started late was not refused yet when the refusals were counted)
        wait_for(lambda: len(statuses) >= 3, "three of the key's reads refused", 60)
        with gw.client(gw.keys["admin"], timeout=10) as admin:  # reads api_keys only: no lock on it
            started = time.perf_counter()
            try:
                listed: int | None = admin.get("/admin/keys").status_code
            except httpx.TimeoutException:
                listed = None
            took = time.perf_counter() - started
        refused = sorted(statuses)
        lock.rollback()
        for reader in readers:
            reader.join()
    assert listed == 200 and took < 3.0, (listed, took)
    assert refused == [429] * 3  # past 1 running and 4 waiting, at once
    assert sorted(statuses) == [200] * 5 + [429] * 3
