"""The embedded backend against raw llama.cpp: the same prompts, greedy, the same number of tokens (end
tokens suppressed), streamed through `margin serve` and through `llama_cpp.Llama` in this process, in
alternating order in one run.

    python benchmarks/local_backend.py [--tokens 128] [--rounds 3]

Writes benchmarks/results/local_backend.json: margin_decode_tok_s, raw_decode_tok_s, ratio (target ≥ 0.95),
ttft_overhead_ms, and the per-request numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from margin.backends.llamacpp import resolve_model_file

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = [
    "Explain how a bicycle gear works.",
    "Write a short story about a lighthouse keeper.",
    "List some tips for learning a new language.",
    "Describe the water cycle to a child.",
    "What makes a good cup of coffee?",
]
NO_EOS = {0: -100.0, 2: -100.0}  # SmolLM2's end tokens: every run decodes exactly max_tokens


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timing(sent: float, stamps: list[float], tokens: int) -> dict[str, float]:
    return {
        "ttft_ms": (stamps[0] - sent) * 1000,
        "decode_tok_s": (tokens - 1) / (stamps[-1] - stamps[0]),
        "e2e_ms": (stamps[-1] - sent) * 1000,
        "chunks": len(stamps),
    }


def run_raw(llm: Any, prompt: str, tokens: int) -> dict[str, float]:
    sent, stamps = time.perf_counter(), []
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}],
        max_tokens=tokens,
        temperature=0.0,
        stream=True,
        logit_bias=NO_EOS,
    ):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    return timing(sent, stamps, tokens)


def run_margin(http: httpx.Client, prompt: str, tokens: int) -> dict[str, float]:
    body = {
        "model": "local",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(k): v for k, v in NO_EOS.items()},
    }
    sent, stamps, usage = time.perf_counter(), [], None
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
            usage = event.get("usage") or usage
    assert usage is not None and usage["completion_tokens"] == tokens, usage
    return timing(sent, stamps, tokens)


def start_margin(workdir: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    config = workdir / "margin.yaml"
    config.write_text(
        "server: {log_level: warning}\n"
        f"storage: {{ledger: 'sqlite:///{workdir / 'ledger.db'}'}}\n"
        f"backends:\n  local: {{kind: llamacpp, n_ctx: 4096, threads: {threads}}}\n"
        "models:\n  smollm2-135m-instruct: {backend: local, aliases: [local]}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "margin", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("margin did not start")


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "local_backend.json")
    args = parser.parse_args()
    from llama_cpp import Llama

    threads = os.cpu_count() or 1
    path = resolve_model_file("builtin:smollm2-135m-q4_1")
    llm = Llama(model_path=str(path), n_ctx=4096, n_threads=threads, verbose=False)
    raw: list[dict[str, float]] = []
    through: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_margin(Path(tmp), port, threads)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
                run_raw(llm, PROMPTS[0], 8)  # warm-up both
                run_margin(http, PROMPTS[0], 8)
                for round_ in range(args.rounds):
                    for i, prompt in enumerate(PROMPTS):

                        def raw_run(p: str = prompt) -> dict[str, float]:
                            return run_raw(llm, p, args.tokens)

                        def margin_run(p: str = prompt) -> dict[str, float]:
                            return run_margin(http, p, args.tokens)

                        pair = [("raw", raw_run), ("margin", margin_run)]
                        for name, run in pair if (round_ + i) % 2 == 0 else pair[::-1]:
                            (raw if name == "raw" else through).append(run())
                    print(
                        f"round {round_ + 1}: raw {median(raw, 'decode_tok_s'):.1f} tok/s, "
                        f"margin {median(through, 'decode_tok_s'):.1f} tok/s",
                        flush=True,
                    )
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {
        "benchmark": "local_backend",
        "what": "SmolLM2-135M-Instruct Q4_1, greedy, end tokens suppressed, streamed; margin serve vs raw "
        "llama_cpp.Llama.create_chat_completion in one run, alternating order",
        "tokens_per_request": args.tokens,
        "requests_per_path": len(raw),
        "threads": threads,
        "margin_decode_tok_s": round(median(through, "decode_tok_s"), 2),
        "raw_decode_tok_s": round(median(raw, "decode_tok_s"), 2),
        "ratio": round(median(through, "decode_tok_s") / median(raw, "decode_tok_s"), 4),
        "margin_ttft_ms": round(median(through, "ttft_ms"), 2),
        "raw_ttft_ms": round(median(raw, "ttft_ms"), 2),
        "ttft_overhead_ms": round(median(through, "ttft_ms") - median(raw, "ttft_ms"), 2),
        "target": {"ratio": 0.95},
        "runs": {"margin": through, "raw": raw},
        "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "versions": {"llama_cpp_python": __import__("llama_cpp").__version__, "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("margin_decode_tok_s", "raw_decode_tok_s", "ratio", "ttft_overhead_ms")}))


if __name__ == "__main__":
    main()
