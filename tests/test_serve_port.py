"""`tests.helpers.margin_serve` on a port taken before the gateway binds it: `free_port` gives a port nobody
holds at that moment, and any connection's local port (or another process's server) may take it during the
seconds `margin serve` takes to start. The test starts another gateway on another port instead of failing."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import yaml

from tests import helpers
from tests.security.conftest import FAKE_CONFIG


def test_a_port_taken_before_the_gateway_binds_it_is_tried_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "margin.yaml"
    config.write_text(yaml.safe_dump(FAKE_CONFIG))
    given: list[int] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free_port = helpers.free_port

        def port() -> int:
            given.append(taken.getsockname()[1] if not given else free_port())
            return given[-1]

        monkeypatch.setattr(helpers, "free_port", port)
        log = tmp_path / "serve.log"
        with helpers.margin_serve(tmp_path / "ledger.db", log, config=config, ready_s=60) as (url, _):
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    assert len(given) == 2 and url == f"http://127.0.0.1:{given[1]}"
