"""The planner is an offline kit: the gateway never imports it (DESIGN §10.17)."""

from __future__ import annotations

import subprocess
import sys


def test_serve_does_not_import_the_planner() -> None:
    probe = "import sys, margin.serve, margin.app; print(sorted(m for m in sys.modules if m.startswith('margin.plan')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_loads_the_planner_only_when_named() -> None:
    probe = (
        "import sys, margin.cli; before = sorted(m for m in sys.modules if m.startswith('margin.plan')); "
        "command = margin.cli.load_kit('plan'); "
        "print(before, sorted(command.commands))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, _, commands = out.stdout.strip().partition("] ")
    assert before == "["  # `margin --help` and `margin serve` import none of the planner
    assert "calibrate" in commands or "place" in commands, commands
