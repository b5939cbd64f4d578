"""One `margin bench` invocation: warm-up, then each load point in turn, each with its metrics, utilization,
economics, the client's own load and the raw request records. The result's schema is in SCHEMA.md."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import orjson

from margin.bench import economics, energy, loadgen, metrics
from margin.bench.prompts import Prompt, PromptSpec, load_prompts
from margin.bench.records import RequestRecord
from margin.config import is_loopback

SCHEMA = "margin.bench/1"


@dataclass(frozen=True, slots=True)
class BenchConfig:
    target: loadgen.Target
    shapes: list[loadgen.LoadShape]
    prompts: PromptSpec
    warmup: int = 0
    slos_ms: dict[str, float] = field(default_factory=dict)
    econ: economics.EconSpec = field(default_factory=economics.EconSpec)
    meter: energy.MeterChoice = "auto"
    quantization: str | None = None

    def to_json(self) -> dict[str, Any]:
        target = self.target
        return {
            "base_url": target.base_url,
            "model": target.model,
            "endpoint": target.endpoint,
            "ignore_eos": target.ignore_eos,
            "extra_body": target.extra_body,
            "timeout_s": target.timeout_s,
            "loads": [
                {k: getattr(s, k) for k in ("concurrency", "rate", "burstiness", "num_requests", "duration_s", "seed")}
                for s in self.shapes
            ],
            "dataset": {k: getattr(self.prompts, k) for k in PromptSpec.__slots__},
            "warmup": self.warmup,
            "slos_ms": self.slos_ms,
            "economics": self.econ.describe(),
            "energy_meter": self.meter,
            "quantization": self.quantization,
        }

    def config_hash(self) -> str:
        canonical = orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:16]


def is_local(base_url: str) -> bool:
    return is_loopback(urlparse(base_url).hostname or "")


Progress = Callable[[str, int | None], Callable[[RequestRecord], None]]


async def run_bench(config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    count = max((s.num_requests or 0) for s in config.shapes) or 1000
    prompts = load_prompts(PromptSpec(**{**config.to_json()["dataset"], "count": max(count, config.warmup, 1)}))
    local = is_local(config.target.base_url)
    async with loadgen.session() as session:
        server = await _server_info(session, config.target)
        warm = await _warmup(session, config, prompts)
        runs = [await _one_point(session, config, prompts, shape, local, progress) for shape in config.shapes]
    return {
        "schema": SCHEMA,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.to_json(),
        "config_hash": config.config_hash(),
        "seed": config.prompts.seed,
        "model": {"name": config.target.model, "quantization": config.quantization, "server": server},
        "price_version": _price_version(runs),
        "versions": versions(),
        "hardware": hardware(local),
        "warmup": warm,
        "runs": runs,
    }


async def _one_point(
    session: aiohttp.ClientSession,
    config: BenchConfig,
    prompts: list[Prompt],
    shape: loadgen.LoadShape,
    local: bool,
    progress: Progress | None,
) -> dict[str, Any]:
    meter = energy.RunMeter(config.meter, local)
    on_done = progress(shape.label(), shape.num_requests) if progress else None
    meter.start()
    outcome = await loadgen.run_load(session, config.target, prompts, shape, on_done)
    measured_j, util = await meter.stop()
    summary = metrics.summarize(outcome.records, outcome.duration_s, config.slos_ms)
    busy_s = metrics.busy_seconds(outcome.records)
    reading = energy.reading(
        measured_j,
        meter.method,
        choice=config.meter,
        busy_s=busy_s,
        duration_s=outcome.duration_s,
        power_w=config.econ.power_w,
        idle_w=config.econ.idle_w,
    )
    done = [(r.input_tokens or r.prompt_len_est or 0, r.output_tokens) for r in outcome.records if r.ok]
    return {
        "load": {"label": shape.label(), **config.to_json()["loads"][config.shapes.index(shape)]},
        "started_unix": round(outcome.started_unix, 3),
        "metrics": summary,
        "utilization": {"busy_fraction": summary["busy_fraction"], **util},
        "economics": economics.compute(config.econ, summary, reading, done),
        "client": outcome.client,
        "errors": _errors(outcome.records),
        "requests": [r.to_json() for r in outcome.records],
    }


async def _warmup(session: aiohttp.ClientSession, config: BenchConfig, prompts: list[Prompt]) -> dict[str, Any]:
    if config.warmup <= 0:
        return {"requests": 0, "failed": 0}
    width = config.shapes[0].concurrency or 1
    shape = loadgen.LoadShape(concurrency=min(width, config.warmup), num_requests=config.warmup)
    outcome = await loadgen.run_load(session, config.target, prompts, shape)
    failed = sum(1 for r in outcome.records if not r.ok)
    return {"requests": config.warmup, "failed": failed, "duration_s": round(outcome.duration_s, 3)}


def _errors(records: list[RequestRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if not r.ok:
            key = f"{r.status or 'exception'}: {(r.error or '')[:80]}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _price_version(runs: list[dict[str, Any]]) -> str | None:
    for run in runs:
        econ = run["economics"]
        if econ.get("list_price_version"):
            return str(econ["list_price_version"])
        if econ.get("tco_usd_per_1k_tokens") is not None:
            return f"tco:{econ['inputs']['source']}"
    return None


async def _server_info(session: aiohttp.ClientSession, target: loadgen.Target) -> dict[str, Any]:
    """The endpoint's /models list and Server header (best effort: a bench still runs without them)."""
    url = f"{target.base_url.rstrip('/')}/models"
    try:
        async with session.get(url, headers=target.headers(), timeout=aiohttp.ClientTimeout(total=10)) as response:
            body = await response.json(content_type=None) if response.status == 200 else {}
            ids = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
            return {"models": ids, "server_header": response.headers.get("server")}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"models": None, "error": f"{type(exc).__name__}: {exc}"[:200]}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("margin", "aiohttp", "numpy", "genai-prices", "matplotlib", "nvidia-ml-py"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware(local: bool) -> dict[str, Any]:
    """The client host (also the server's when the endpoint is on loopback)."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    except OSError:
        names = []
    if names:
        cpu = names[0].split(":", 1)[1].strip()
    mem_gib = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        mem_gib = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    gpu = energy.nvml()
    return {
        "client_host": {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_gib": mem_gib, "os": platform.platform()},
        "gpus": gpu.names() if gpu else [],
        "server_on_client_host": local,
    }
