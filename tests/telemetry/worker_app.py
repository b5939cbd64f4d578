"""An app factory for `uvicorn --factory --workers N` in the multi-worker metrics test: the config file named
by MARGIN_TEST_CONFIG."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from margin.app import build_app
from margin.config import load_settings


def app() -> Starlette:
    return build_app(load_settings(os.environ["MARGIN_TEST_CONFIG"]))
