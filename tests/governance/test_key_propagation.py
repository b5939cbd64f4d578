"""A key revoked or rotated is refused by every running gateway process at once, not within the key cache's TTL:
two `margin serve` replicas on one Redis, `--workers 2` (its embedded Redis), and the CLI against a running
gateway, with or without a Redis. Every gateway here caches keys for 60 s (`key_cache_ttl_s`) and, where the
test is about Redis' channel, passes over governance every 30 s (`admission.refresh_s`): only the announcement
can explain a refusal within a second or two. Before, each of these answered 200 until the TTL ran out."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import orjson
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from tests.cut_proxy import cut_proxy
from tests.governance.test_replica_rules import _key
from tests.governance.test_replicas import _flush, config, replicas
from tests.helpers import margin_serve

pytestmark = pytest.mark.integration

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _config(tmp_path: Path, redis_url: str | None, refresh_s: float = 30) -> Path:
    path = config(tmp_path, redis_url)
    data = yaml.safe_load(path.read_text())
    data["budgets"] = []
    data["server"]["key_cache_ttl_s"] = 60  # a key found stays cached for the whole test
    data["admission"] = {"refresh_s": refresh_s}
    path.write_text(yaml.safe_dump(data))
    return path


def _status(url: str, key: str) -> int:
    """The status of one chat completion through the official SDK (a fresh client: a fresh connection)."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        try:
            client.chat.completions.create(model="priced", messages=USER, max_tokens=4)
        except openai.APIStatusError as exc:
            return exc.status_code
    return 200


def _refused_after(url: str, key: str, timeout_s: float = 5) -> float:
    """Seconds until `url` answers `key` with 401, whatever it answered before (Redis down: 503s too); fails the
    test if it does not within `timeout_s`."""
    start = time.monotonic()
    while (status := _status(url, key)) != 401 and time.monotonic() - start < timeout_s:
        time.sleep(0.05)
    assert status == 401, f"still {status} {timeout_s} s after the change"
    return time.monotonic() - start


def _key_id(key: str) -> str:
    return key.split("_")[1]  # mgn_<id>_<secret>


def _cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "margin", "keys", *args, "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )


def test_a_key_revoked_through_one_replica_is_refused_by_the_other_at_once(tmp_path: Path, redis_url: str) -> None:
    path = _config(tmp_path, redis_url)
    asyncio.run(_flush(redis_url))
    admin, victim = _key(path, "--name", "ops", "--admin"), _key(path, "--name", "svc")
    with replicas(path) as (first, second):
        assert _status(second, victim) == 200  # cached by the second for 60 s
        revoked = httpx.delete(f"{first}/admin/keys/{_key_id(victim)}", headers={"authorization": f"Bearer {admin}"})
        assert revoked.status_code == 200
        assert _refused_after(second, victim) < 1.5  # was 200 for 60 s
        assert _status(first, victim) == 401
        assert _status(second, admin) == 200  # the other keys are served as before


def test_a_rotated_keys_old_secret_stops_on_the_other_replica_at_once(tmp_path: Path, redis_url: str) -> None:
    path = _config(tmp_path, redis_url)
    asyncio.run(_flush(redis_url))
    admin, old = _key(path, "--name", "ops", "--admin"), _key(path, "--name", "svc")
    with replicas(path) as (first, second):
        assert _status(second, old) == 200
        rotated = httpx.post(
            f"{first}/admin/keys/{_key_id(old)}/rotate",
            json={"grace_s": 0},
            headers={"authorization": f"Bearer {admin}"},
        )
        assert rotated.status_code == 200
        assert _refused_after(second, old) < 1.5  # was 200 for 60 s after a rotation meant for a leaked key
        assert _status(second, rotated.json()["key"]) == 200


def test_a_cli_revocation_reaches_the_gateways_on_the_redis_its_config_names(tmp_path: Path, redis_url: str) -> None:
    path = _config(tmp_path, redis_url)
    asyncio.run(_flush(redis_url))
    victim, rotated = _key(path, "--name", "svc"), _key(path, "--name", "other")
    with replicas(path, n=1) as (url,):
        assert _status(url, victim) == 200 and _status(url, rotated) == 200
        told = _cli(path, "revoke", _key_id(victim))
        assert _refused_after(url, victim) < 1.5  # refresh_s is 30: Redis' channel, not the pass
        assert "at once" in told.stdout
        _cli(path, "rotate", _key_id(rotated), "--grace", "0")
        assert _refused_after(url, rotated) < 1.5


def test_a_cli_revocation_reaches_a_gateway_on_sqlite_without_redis(tmp_path: Path) -> None:
    """No Redis anywhere: the gateway's governance pass (every 0.5 s here) reads the audit log's last id and
    finds the CLI's `key.revoke` / `key.rotate` rows."""
    path = _config(tmp_path, None, refresh_s=0.5)
    victim, rotated = _key(path, "--name", "svc"), _key(path, "--name", "other")
    with margin_serve(None, tmp_path / "serve.log", path) as (url, _):
        assert _status(url, victim) == 200 and _status(url, rotated) == 200
        told = _cli(path, "revoke", _key_id(victim))
        assert _refused_after(url, victim) < 3  # was 200 for 60 s
        assert "within admission.refresh_s" in told.stdout
        _cli(path, "rotate", _key_id(rotated), "--grace", "0")
        assert _refused_after(url, rotated) < 3
        assert _status(url, _key(path, "--name", "third")) == 200  # a key created meanwhile: served


def _statuses(url: str, key: str, n: int) -> list[int]:
    return [_status(url, key) for _ in range(n)]  # each on a fresh connection: the kernel spreads them


def test_the_workers_of_one_gateway_all_refuse_a_revoked_key_at_once(tmp_path: Path) -> None:
    path = _config(tmp_path, None)  # the supervisor's embedded Redis
    admin, victim = _key(path, "--name", "ops", "--admin"), _key(path, "--name", "svc")
    with margin_serve(None, tmp_path / "serve.log", path, extra=["--workers", "2"]) as (url, _):
        assert _statuses(url, victim, 20) == [200] * 20  # both workers cache it (60 s)
        headers = {"authorization": f"Bearer {admin}"}
        assert httpx.delete(f"{url}/admin/keys/{_key_id(victim)}", headers=headers).status_code == 200
        time.sleep(0.5)
        assert _statuses(url, victim, 20) == [401] * 20  # was 200 from the other worker for 60 s


def test_with_redis_down_a_revocation_still_reaches_the_other_replica(tmp_path: Path, redis_url: str) -> None:
    """Redis cut under both replicas: the revocation answers 200 (the announcement failing is a line in the
    log), and the other replica finds it in the audit log at its next pass (0.5 s here), not after the 60 s TTL.
    Its listener says once that it hears nothing, without a traceback, however many retries."""
    asyncio.run(_flush(redis_url))
    target = urlsplit(redis_url)
    with cut_proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        path = _config(tmp_path, f"redis://127.0.0.1:{proxy.port}/0", refresh_s=0.5)
        admin, victim = _key(path, "--name", "ops", "--admin"), _key(path, "--name", "svc")
        with replicas(path) as (first, second):
            assert _status(second, victim) == 200
            proxy.cut()
            revoked = httpx.delete(
                f"{first}/admin/keys/{_key_id(victim)}", headers={"authorization": f"Bearer {admin}"}
            )
            assert revoked.status_code == 200
            assert _refused_after(second, victim) < 4  # was 200 (or 503) for 60 s
            time.sleep(3)  # three more retries of the listener
            log = (tmp_path / f"gateway-{urlsplit(second).port}.log").read_text()
            proxy.restore()
    assert log.count("key announcements are not heard") == 1
    assert "Traceback" not in log


@pytest.mark.parametrize("as_json", [False, True])
def test_a_cli_rotation_prints_the_new_key_before_it_waits_on_redis(tmp_path: Path, as_json: bool) -> None:
    """The rotation is committed before the announcement: a Redis that accepts connections and never answers
    held the CLI (~5 s) before it printed the new secret, shown once; a Ctrl-C then, with `--grace 0`, left the
    key with no working secret. The secret is printed (and flushed, also as `--json` into a pipe) first now."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts (the kernel's backlog) and never answers
        path = _config(tmp_path, f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        key = _key(path, "--name", "svc")
        command = [sys.executable, "-m", "margin", "keys", "rotate", _key_id(key), "--grace", "0"]
        command += ["--config", str(path), *(["--json"] if as_json else [])]
        env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}  # as a user runs it
        rotating = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert rotating.stdout is not None
            deadline = time.monotonic() + 30
            lines: list[str] = []
            while not any("mgn_" in line for line in lines) and time.monotonic() < deadline:
                lines.append(rotating.stdout.readline())
            shown = next(line for line in lines if "mgn_" in line)
            new = orjson.loads(shown)["key"] if as_json else shown.strip()
            # nothing said of the announcement yet (the old order printed its outcome, after ~5 s, first), and
            # the key out while the CLI still waits on the silent Redis (`--json` was flushed only at the exit)
            assert not any("running gateways" in line for line in lines), lines
            shown_at = time.monotonic()
            assert rotating.wait(timeout=60) == 0  # told nobody (the silent Redis): the audit log tells them
            assert time.monotonic() - shown_at > 2  # out ~5 s (the announcement's limit) before the exit, not at it
        finally:
            rotating.kill()
            rotating.wait()
            if rotating.stdout is not None:
                rotating.stdout.close()
    assert _key_id(new) == _key_id(key) and new != key
