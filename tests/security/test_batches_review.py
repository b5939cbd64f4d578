"""Attack tests against a real `margin serve` (the Batch API's review): an id no object can have answers the
404 of an id that does not exist (on PostgreSQL a NUL in it was a 500 from the driver); a job created in
open mode stops spending once the gateway requires keys (its lines ran on, unattributed, while an anonymous
call was refused); one key's uploads in flight are bounded (each holds its file until it is stored)."""

from __future__ import annotations

import threading

import httpx
import orjson

from tests.security.conftest import FAKE_CONFIG, ServeFactory
from tests.security.waiting import all_sent, stalled_upload, wait_for

FAST = {"batches": {"objective": "asap", "poll_s": 0.05}}
CHAT = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}


def _line(custom_id: str) -> bytes:
    body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def _upload(client: httpx.Client, content: bytes) -> str:
    answer = client.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    return str(answer.json()["id"])


def test_an_id_with_a_nul_is_a_404_on_postgresql(served: ServeFactory, fresh_postgres: str) -> None:
    with served(FAST, keys={"a": []}, ledger=fresh_postgres) as gw, gw.client(gw.keys["a"]) as a:
        for method, path in (
            ("GET", "/v1/files/file-%00"),
            ("GET", "/v1/files/file-%00/content"),
            ("DELETE", "/v1/files/file-%00"),
            ("GET", "/v1/batches/batch_%00"),
            ("POST", "/v1/batches/batch_%00/cancel"),
            ("GET", "/v1/files?after=file-%00"),
            ("GET", "/v1/batches?after=batch_%00"),
        ):
            answer = a.request(method, path, json={} if method == "POST" else None)
            assert answer.status_code == 404, (method, path, answer.text)
        nul_purpose = a.get("/v1/files?purpose=%00")  # a purpose no file has: an empty list, not a 500
        assert nul_purpose.status_code == 200 and nul_purpose.json()["data"] == [], nul_purpose.text
        job = a.post("/v1/batches", json={"input_file_id": "file-\x00", **CHAT})
        assert job.status_code == 404 and job.json()["error"]["param"] == "input_file_id"
        file_id = _upload(a, _line("one"))  # the gateway still serves: nothing was left broken
        assert a.get(f"/v1/files/{file_id}").status_code == 200


def test_an_open_mode_job_stops_once_a_key_exists(served: ServeFactory) -> None:
    slow = {**FAKE_CONFIG["backends"]["fake"], "ttft_ms": 200}
    config = {
        "backends": {"fake": slow},
        "batches": {"objective": "asap", "poll_s": 0.05, "concurrency": 1},
        "server": {"key_cache_ttl_s": 0},
    }
    with served(config) as gw, gw.client() as anonymous:
        file_id = _upload(anonymous, b"\n".join(_line(str(n)) for n in range(40)))
        batch = anonymous.post("/v1/batches", json={"input_file_id": file_id, **CHAT}).json()
        wait_for(lambda: any(row.batch_id for row in gw.rows()), "a first line to run")
        assert gw.cli("keys", "create", "--name", "operator", "--admin").returncode == 0
        chat = {"model": "fake-chat", "messages": [{"role": "user", "content": "x"}]}
        wait_for(lambda: anonymous.post("/v1/chat/completions", json=chat).status_code == 401, "the gateway to close")
        wait_for(lambda: gw.rows("batches")[0].status == "completed", "the job to end")
        job = gw.rows("batches")[0]
        parts = sorted((p.seq, p.data) for p in gw.rows("batch_file_parts") if p.file_id == job.error_file_id)
        failed = [orjson.loads(raw) for raw in b"".join(bytes(data) for _, data in parts).splitlines()]
        refused = [entry for entry in failed if entry["response"]["status_code"] == 401]
        assert refused and job.completed + len(failed) == 40  # refused: failed, not retried, not run
        billed = [row for row in gw.rows() if row.batch_id == batch["id"]]
        assert len(billed) == 40 - len(refused) < 40


def _slow_upload(client: httpx.Client, release: threading.Event, sent: threading.Semaphore, codes: list[int]) -> None:
    """An upload whose body stops after its first part until `release` is set (chunked, as a slow client's)."""
    headers = {"content-type": "multipart/form-data; boundary=b"}
    body = stalled_upload(_line("one"), release, sent)
    codes.append(client.post("/v1/files", content=body, headers=headers).status_code)


def test_a_keys_uploads_in_flight_are_bounded(served: ServeFactory) -> None:
    """Six uploads of one key whose bodies stall: two read their bodies, four wait for a place without reading,
    and a seventh is refused at once. The seventh is sent once the six have sent their heads (it was sent
    1.5 s after they were started: one started later on a loaded machine found the seventh in its place)."""
    release, sent, codes = threading.Event(), threading.Semaphore(0), list[int]()
    with served(FAST, keys={"a": [], "b": []}) as gw, gw.client(gw.keys["a"]) as a, gw.client(gw.keys["b"]) as b:
        slow = [threading.Thread(target=_slow_upload, args=(a, release, sent, codes)) for _ in range(6)]
        try:
            for thread in slow:
                thread.start()
            all_sent(sent, 6)  # two read their bodies, four wait for a place without reading
            refused = a.post("/v1/files", files={"file": ("x.jsonl", _line("x"))}, data={"purpose": "batch"})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
            assert "file upload" in refused.json()["error"]["message"]
            assert b.get("/v1/files").status_code == 200 and _upload(b, _line("b")).startswith("file-")  # others
        finally:
            release.set()
            for thread in slow:
                thread.join(30)
        assert codes == [200] * 6
        assert _upload(a, _line("again")).startswith("file-")  # the places were given back
