"""Single flight across replicas (`margin.cache.flight`): two `margin serve` on one cache Redis, a recording
upstream that answers slowly, the official SDK as the client, identical cacheable requests sent to both at
once. One upstream call answers them all; every request has its ledger row, the others hits at cost 0 that
record what the answer saved; other teams and `x-margin-cache: off` are never coalesced. An owner that fails
lets the others go upstream after it (none hangs); a Redis that is gone serves every request as before.
Before: each replica (and each request in one) missed and called upstream."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import openai
import yaml
from redis import Redis
from redis.exceptions import RedisError

from margin import keys
from margin.ledger import db as ledger_db
from tests.helpers import free_port, margin_serve, wait_ledger_row
from tests.servers import http_thread, recording_handler, redis_server, reply_events, reply_json

SLOW_S = 1.0  # the upstream's answer time: the requests overlap
PRICE = {"input": "1", "output": "2"}
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
COST = 12 * 1000 + 7 * 2000  # nano-USD


@dataclass
class Upstream:
    """What the fake upstream was sent (bodies, in order, and when), and whether it fails its first call."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    fail_first: bool = False
    slow_s: float = SLOW_S
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self.lock:
            self.arrived.append(time.monotonic())
            failing = self.fail_first and len(self.arrived) == 1
        time.sleep(self.slow_s)
        with self.lock:
            self.answered.append(time.monotonic())  # before the answer leaves: nothing it causes comes earlier
        if failing:
            reply_json(handler, 500, {"error": {"message": "upstream broke", "type": "server_error"}})
        elif body.get("stream"):
            reply_events(handler, _events(body))
        else:
            message = {"role": "assistant", "content": "the answer"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            answer = {"id": "chatcmpl-f", "object": "chat.completion", "model": body["model"], "choices": [choice]}
            answer |= {"created": 1, "usage": USAGE}
            reply_json(handler, 200, answer)


def _events(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    head = {"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
    yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "the answer"}}]}
    yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield {**head, "choices": [], "usage": USAGE}


@dataclass
class Replicas:
    urls: list[str]
    db: Path
    keys: dict[str, str]
    upstream: Upstream
    logs: list[Path]

    def ask(self, replica: int, team: str, content: str, *, stream: bool = False, cache: str | None = None) -> Any:
        """One chat request through the SDK: (status, x-margin-cache, request id, text), errors included."""
        client = openai.OpenAI(base_url=self.urls[replica] + "/v1", api_key=self.keys[team], max_retries=0, timeout=60)
        headers = {} if cache is None else {"x-margin-cache": cache}
        body: Any = {"model": "up", "temperature": 0, "messages": [{"role": "user", "content": content}]}
        try:
            if stream:
                with client.chat.completions.with_streaming_response.create(
                    **body, stream=True, extra_headers=headers
                ) as raw:
                    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
                    return 200, raw.headers.get("x-margin-cache"), raw.headers["x-request-id"], text
            reply = client.chat.completions.with_raw_response.create(**body, extra_headers=headers)
            text = reply.parse().choices[0].message.content
            return 200, reply.headers.get("x-margin-cache"), reply.headers["x-request-id"], text
        except openai.APIStatusError as error:
            return error.status_code, error.response.headers.get("x-margin-cache"), error.request_id, None
        finally:
            client.close()

    def row(self, request_id: str) -> Any:
        return wait_ledger_row(self.db, self.urls[0], request_id)


def _keys(db: Path) -> dict[str, str]:
    url = f"sqlite:///{db}"
    ledger_db.upgrade(url)
    engine = ledger_db.make_sync_engine(url)
    made = {team: keys.create_key(engine, keys.NewKey(team, team, {}, None, False, None))[1] for team in ("a", "b")}
    engine.dispose()
    return made


@contextmanager
def replicas(
    folder: Path, redis: str | None, upstream: Upstream, count: int = 2, cache: dict[str, Any] | None = None
) -> Iterator[Replicas]:
    """`count` gateways on one SQLite ledger and one cache Redis (the governance store stays in each process);
    `redis` None: the exact cache in each process' memory in front of the SQLite ledger file. `cache`: more keys
    of the cache section."""
    made = _keys(folder / "ledger.db")
    with http_thread(recording_handler(upstream.bodies, upstream.answer)) as base, ExitStack() as stack:
        backend = {"kind": "openai", "base_url": f"{base}/v1", "timeout_s": 30, "retries": {"attempts": 0}}
        config = {
            "storage": {"flush_interval_ms": 10},
            "cache": ({} if redis is None else {"redis": redis}) | (cache or {}),
            "backends": {"upstream": backend},
            "models": {"up": {"backend": "upstream", "upstream_model": "m", "price": PRICE}},
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        logs = [folder / f"serve{i}.log" for i in range(count)]
        urls = [
            stack.enter_context(margin_serve(folder / "ledger.db", log, config=folder / "margin.yaml", ready_s=90))[0]
            for log in logs
        ]
        yield Replicas(urls, folder / "ledger.db", made, upstream, logs)


def burst(calls: list[Callable[[], Any]]) -> list[Any]:
    """All of `calls` at once, each on a thread of its own; their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def check_one_paid(gw: Replicas, answers: list[Any], streams: list[bool]) -> None:
    """`answers` to identical requests (of which `streams` were streamed) that one upstream call answered: one
    miss that paid, the others hits at cost 0 that record what the answer saved, streams replayed as streams."""
    assert sorted(cache for _, cache, _, _ in answers) == ["hit-exact"] * (len(answers) - 1) + ["miss"]
    rows = [gw.row(request_id) for _, _, request_id, _ in answers]
    assert len({row.request_id for row in rows}) == len(answers)
    hits = [row for row in rows if row.kind == "cache_hit"]
    assert len(hits) == len(answers) - 1
    assert all((row.cost_nanousd, row.saved_nanousd, row.status, row.cache) == (0, COST, "ok", "exact") for row in hits)
    (paid,) = [row for row in rows if row.kind != "cache_hit"]
    assert (paid.cost_nanousd, paid.cache) == (COST, None)
    assert [row.stream for row in rows] == streams


def check_failed_first(gw: Replicas, answers: list[Any]) -> None:
    """`answers` to identical requests whose first upstream call failed: that one request got its error, the
    others went upstream each once it had ended (none before, none hung) and paid for their own answers."""
    failed = [answer for answer in answers if answer[0] != 200]
    assert [answer[:2] for answer in failed] == [(502, "miss")]  # the owner's own error, nobody else's
    served = [answer for answer in answers if answer[0] == 200]
    assert len(served) == len(answers) - 1 and all(answer[3] == "the answer" for answer in served)
    assert len(gw.upstream.bodies) == len(answers)
    assert min(gw.upstream.arrived[1:]) > gw.upstream.answered[0]
    rows = [gw.row(answer[2]) for answer in served]
    assert all(row.kind == "request" and row.cost_nanousd == COST for row in rows)


def check_identical_burst(gw: Replicas, question: str) -> list[Any]:
    """6 identical cacheable requests of team a (every third streamed) spread over the replicas, with another
    team's and an `x-margin-cache: off` one at once: three upstream calls (before: 8), the five waiters hits at
    cost 0. The answers, in that order."""
    n = len(gw.urls)
    same = [partial(gw.ask, i % n, "a", question, stream=i % 3 == 0) for i in range(6)]
    others = [
        partial(gw.ask, 1 % n, "b", question),  # another team: never answered from team a's call
        partial(gw.ask, 0, "a", question, cache="off"),  # not cacheable: its own call
    ]
    started = time.monotonic()
    answers = burst([*same, *others])
    assert time.monotonic() - started < SLOW_S * 2 + 10  # the waiters were answered as the call ended
    assert [status for status, *_ in answers] == [200] * 8
    assert all(text == "the answer" for *_, text in answers)
    assert len(gw.upstream.bodies) == 3  # team a once, team b once, the `off` request (before: 8)
    check_one_paid(gw, answers[:6], [i % 3 == 0 for i in range(6)])
    assert answers[6][1] == "miss" and answers[7][1] is None
    return answers


def test_identical_requests_on_two_replicas_at_once_make_one_upstream_call(tmp_path: Path, redis_url: str) -> None:
    question = f"what is the answer? {uuid.uuid4().hex}"  # the session's Redis is shared: a question of its own
    with replicas(tmp_path, redis_url, Upstream()) as gw:
        answers = check_identical_burst(gw, question)
        assert gw.row(answers[6][2]).request_id != gw.row(answers[7][2]).request_id
        assert gw.ask(1, "a", question)[1] == "hit-exact"  # stored as any answer is
        assert len(gw.upstream.bodies) == 3


def test_an_owner_that_fails_lets_the_others_go_upstream_after_it(tmp_path: Path, redis_url: str) -> None:
    question = f"a question that fails first {uuid.uuid4().hex}"
    upstream = Upstream(fail_first=True)  # the first call it gets (the lease owner's) answers 500, after SLOW_S
    with replicas(tmp_path, redis_url, upstream) as gw:
        started = time.monotonic()
        answers = burst([partial(gw.ask, i % 2, "a", question, stream=i == 1) for i in range(5)])
        assert time.monotonic() - started < SLOW_S * 2 + 10  # none waited past the failure (none hung)
        check_failed_first(gw, answers)


def test_a_redis_that_is_gone_serves_every_request_each_from_upstream(tmp_path: Path) -> None:
    question = f"redis is down {uuid.uuid4().hex}"
    (tmp_path / "redis").mkdir()
    with redis_server(free_port(), tmp_path / "redis") as redis, replicas(tmp_path, redis, Upstream()) as gw:
        assert gw.ask(0, "a", "before")[:2] == gw.ask(1, "a", "before 2")[:2] == (200, "miss")
        with Redis.from_url(redis) as client, contextlib.suppress(RedisError):
            client.shutdown(nosave=True)  # the connection ends with the server
        started = time.monotonic()
        answers = burst([partial(gw.ask, i % 2, "a", question, stream=i == 0) for i in range(4)])
        assert time.monotonic() - started < SLOW_S + 10  # nothing waited on the dead Redis
        assert [answer[:2] for answer in answers] == [(200, "miss")] * 4
        assert all(answer[3] == "the answer" for answer in answers)
        assert len(gw.upstream.bodies) == 2 + 4  # each went upstream, as without a cache
        for log in gw.logs:  # one line per process, no traceback per request
            text = log.read_text()
            assert "Traceback" not in text
            assert text.count("in Redis failed") == 1, text
