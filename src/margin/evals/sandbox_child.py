"""The sandbox's child side: confine this process, then run the untrusted program. Run as a script with
`python -I sandbox_child.py SETTINGS.json` inside a fresh temporary directory (the cwd); stdlib only.

Layers, outermost first (each one reported on stderr's first line as JSON so the parent records them):
1. resource limits: address space, CPU seconds, file size, open files, no core dumps;
2. a private network namespace (unshare(CLONE_NEWNET), with a user namespace when not root): no route to
   anything, loopback included;
3. when started as root: drop to the unprivileged `nobody` user, whose files are only the temp dir;
4. RLIMIT_NPROC = 0 once unprivileged: fork and spawn fail in the kernel;
5. an audit hook (cannot be removed from Python) that refuses sockets, fork/exec/spawn, ctypes, and any
   write, delete or rename outside the temp dir.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
BLOCKED_EVENTS = frozenset(
    {
        "socket.__new__",
        "socket.connect",
        "socket.bind",
        "socket.getaddrinfo",
        "os.fork",
        "os.forkpty",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "os.kill",
        "os.killpg",
        "subprocess.Popen",
        "pty.spawn",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.cdata",
        "ctypes.call_function",
        "sys.addaudithook",
        "webbrowser.open",
    }
)
PATH_EVENTS = frozenset({"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link"})
PATH_EVENTS |= {"os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
# Imported before the privilege drop: `nobody` may not be able to read the interpreter's stdlib (a Python
# installed under /root), so the modules programs commonly use are loaded while it still can.
PRELOAD = [
    "abc",
    "array",
    "ast",
    "bisect",
    "cmath",
    "collections",
    "contextlib",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "encodings.idna",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "io",
    "itertools",
    "math",
    "numbers",
    "operator",
    "pathlib",
    "random",
    "re",
    "shutil",
    "socket",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tempfile",
    "textwrap",
    "time",
    "traceback",
    "typing",
    "unicodedata",
]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def limit(settings: dict[str, Any]) -> None:
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (settings["memory_mb"] * mb, settings["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_CPU, (settings["cpu_s"], settings["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (settings["file_mb"] * mb, settings["file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def unshare_network() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    return "namespace" if libc.unshare(flags) == 0 else "audit-only"


def drop_privileges() -> str:
    if os.geteuid() != 0:
        return "unprivileged"
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    return "nobody"


def inside(path: object, home: str) -> bool:
    if not isinstance(path, str | bytes):
        return False
    full = os.path.realpath(os.fsdecode(path))
    return full == home or full.startswith(home + os.sep)


def make_hook(home: str) -> Callable[[str, tuple[Any, ...]], None]:
    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writes and path is not None and not inside(path, home):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory")
        elif event in PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, str | bytes) and not inside(path, home):
                    raise PermissionError(f"sandbox: {event} on {path!r} outside the sandbox directory")

    return hook


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        settings = json.load(handle)
    with open(settings["program"], encoding="utf-8") as handle:
        source = handle.read()
    home = os.path.realpath(os.getcwd())
    for name in PRELOAD:
        __import__(name)
    limit(settings)
    network = unshare_network() if settings["isolate_network"] else "shared"
    user = drop_privileges() if settings["drop_privileges"] else "unchanged"
    if user in ("nobody", "unprivileged") and settings["block_processes"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    layers = {"network": network, "user": user, "audit": settings["audit"]}
    sys.stderr.write("SANDBOX " + json.dumps(layers) + "\n")
    sys.stderr.flush()
    code = compile(source, "program.py", "exec")
    if settings["audit"]:
        sys.addaudithook(make_hook(home))
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":
    main()
