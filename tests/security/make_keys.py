"""`python -m tests.security.make_keys <options> -- <name> <flags…> -- <name> <flags…>`: the operator's
`margin keys create --name <name> <flags…> --json <options>`, once per key, in one process.

The CLI's own command (margin.cli's typer app, `standalone_mode=False` so an error raises and the process exits
non-zero), run in a subprocess of its own as an operator's would be, but one process for all of a gateway's keys:
each `margin` process costs ~1.3 s of CPU in imports and a migration check, and most attack tests create two or
three keys before their gateway starts. Prints one JSON object, name → key."""

from __future__ import annotations

import contextlib
import io
import json
import sys

from margin.cli import app


def _groups(argv: list[str]) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    for arg in argv:
        if arg == "--":
            groups.append([])
        else:
            groups[-1].append(arg)
    return groups


def main(argv: list[str]) -> None:
    options, *specs = _groups(argv)
    made: dict[str, str] = {}
    for name, *flags in specs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            app(["keys", "create", "--name", name, *flags, "--json", *options], standalone_mode=False)
        made[name] = str(json.loads(out.getvalue())["key"])
    print(json.dumps(made))


if __name__ == "__main__":
    main(sys.argv[1:])
