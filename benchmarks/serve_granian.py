"""An ASGI app on granian (one worker, uvloop, HTTP/1.1), for the server comparison of the gateway sweep:
`margin` the same way `margin serve` builds it (its settings from a config file), or any factory.

    python benchmarks/serve_granian.py --config margin.yaml --port 9003
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent


def serve(target: str, port: int, workers: int = 1) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.server import Server

    Server(
        target,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        workers=workers,
        factory=True,
        log_enabled=False,
        working_dir=HERE,
    ).serve()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    from margin.config import load_settings
    from margin.serve import WORKER_SETTINGS

    settings = load_settings(args.config)
    os.environ[WORKER_SETTINGS] = orjson.dumps({"settings": settings.model_dump(mode="json")}).decode()
    serve("margin.serve:worker_app", args.port)


if __name__ == "__main__":
    main()
