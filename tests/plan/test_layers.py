"""The planner is an offline kit: the gateway never imports it (DESIGN §10.17)."""

from __future__ import annotations

import subprocess
import sys


def test_serve_does_not_import_the_planner() -> None:
    probe = "import sys, margin.serve, margin.app; print(sorted(m for m in sys.modules if m.startswith('margin.plan')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_imports_only_the_planners_command_module() -> None:
    probe = "import sys, margin.cli; print(sorted(m for m in sys.modules if m.startswith('margin.plan')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['margin.plan', 'margin.plan.cli']"
