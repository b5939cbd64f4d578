"""`margin eval routing`: out-of-fold routing quality on the RouteLLM labels (DESIGN §8).

Splits never test on what was trained on: MMLU uses leave-subjects-out folds (every subject is in exactly
one test fold and absent from that fold's training set), GSM8K a shuffled k-fold; contaminated prompts are
dropped. Every learner is fitted per fold on the training part; the out-of-fold predictions of all folds are
pooled into one PGR curve per dataset (one global threshold, as deployed). Baselines on the same prompts:
random (expected curve), prompt-length (longest prompts to the strong model) and oracle (labels).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from margin.errors import ConfigError
from margin.routing import learners as lrn
from margin.routing import ngrams
from margin.routing.features import EmbeddingCache, Encoder, MiniLMEncoder
from margin.routing.metrics import PgrCurve, pgr_curve, summary
from margin.routing.routellm import DATASETS, Example, Split, iter_splits, load_dataset

FloatArray = npt.NDArray[np.float64]
BASELINES = ("random", "prompt-length", "oracle")
DEFAULT_ROUTER = "lr-minilm"


@dataclass
class MethodResult:
    name: str
    curve: PgrCurve

    def to_json(self, points: int = 101) -> dict[str, Any]:
        share, pgr = self.curve.sampled(points)
        return {**summary(self.curve), "curve": {"strong_share": share, "pgr": pgr}}


@dataclass
class DatasetResult:
    name: str
    n: int
    weak_accuracy: float
    strong_accuracy: float
    splits: list[str]
    methods: dict[str, MethodResult] = field(default_factory=dict)
    learners: dict[str, MethodResult] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)
    oof: dict[str, FloatArray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "weak_accuracy": round(self.weak_accuracy, 5),
            "strong_accuracy": round(self.strong_accuracy, 5),
            "splits": self.splits,
            "methods": {name: m.to_json() for name, m in self.methods.items()},
            "learners": {
                name: {**summary(m.curve), "fit_s": self.fit_seconds[name]} for name, m in self.learners.items()
            },
        }


@dataclass
class RoutingReport:
    router: str
    k: int
    seed: int
    datasets: dict[str, DatasetResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "definitions": "DESIGN §8; curve = pooled out-of-fold predictions; random = expected curve",
            "label": "weak adequate = weak correct or strong wrong",
            "strong_model": "gpt-4-1106-preview",
            "weak_model": "mistralai/Mixtral-8x7B-Instruct-v0.1",
            "router": self.router,
            "k": self.k,
            "seed": self.seed,
            "datasets": {name: d.to_json() for name, d in self.datasets.items()},
        }


def baseline_scores(examples: Sequence[Example]) -> dict[str, FloatArray]:
    """Scores where higher = send to the strong model."""
    weak = np.asarray([e.weak_ok for e in examples], dtype=np.float64)
    strong = np.asarray([e.strong_ok for e in examples], dtype=np.float64)
    return {
        "random": np.zeros(len(examples)),
        "prompt-length": np.asarray([len(e.prompt) for e in examples], dtype=np.float64),
        "oracle": strong - weak,
    }


def out_of_fold(
    spec: lrn.LearnerSpec, examples: Sequence[Example], embeddings: FloatArray | None, splits: Sequence[Split]
) -> FloatArray:
    """P(weak adequate) for every example, each predicted by the model of the fold that held it out."""
    prompts = [e.prompt for e in examples]
    labels = np.asarray([e.weak_adequate for e in examples], dtype=np.float64)
    counts = ngrams.count_matrix(prompts, lrn.NGRAM_DIM) if spec.ngrams else None
    oof = np.full(len(examples), np.nan)
    for split in splits:
        train_emb = embeddings[split.train] if embeddings is not None else None
        train_counts = counts[split.train] if counts is not None else None
        model = lrn.fit(spec, [prompts[i] for i in split.train], train_emb, labels[split.train], train_counts)
        test_emb = embeddings[split.test] if embeddings is not None else None
        test_counts = counts[split.test] if counts is not None else None
        oof[split.test] = model.predict([prompts[i] for i in split.test], test_emb, test_counts)
    if np.isnan(oof).any():
        raise AssertionError("splits did not cover every example")
    return oof


def evaluate_dataset(
    name: str,
    examples: Sequence[Example],
    embeddings: FloatArray | None,
    specs: Sequence[lrn.LearnerSpec],
    router: str,
    k: int = 5,
    seed: int = 0,
) -> DatasetResult:
    weak = [e.weak_ok for e in examples]
    strong = [e.strong_ok for e in examples]
    splits = list(iter_splits(examples, name, k, seed))
    result = DatasetResult(name, len(examples), float(np.mean(weak)), float(np.mean(strong)), [s.name for s in splits])
    for method, scores in baseline_scores(examples).items():
        result.methods[method] = MethodResult(method, pgr_curve(scores, weak, strong))
    for spec in specs:
        started = time.perf_counter()
        oof = out_of_fold(spec, examples, embeddings if spec.embed else None, splits)
        result.fit_seconds[spec.name] = round(time.perf_counter() - started, 2)
        result.oof[spec.name] = oof
        result.learners[spec.name] = MethodResult(spec.name, pgr_curve(1.0 - oof, weak, strong))
    if router in result.learners:
        result.methods["margin"] = result.learners[router]
    return result


def dataset_embeddings(
    examples: Sequence[Example], cache_path: Path, encoder: Encoder | None, progress: Callable[[int, int], None] | None
) -> FloatArray:
    cache = EmbeddingCache(cache_path, encoder or MiniLMEncoder())
    return cache.embed([e.prompt for e in examples], progress=progress)


def run_routing_eval(
    data_dir: Path,
    *,
    learner_names: Sequence[str],
    router: str = DEFAULT_ROUTER,
    datasets: Sequence[str] = DATASETS,
    k: int = 5,
    seed: int = 0,
    cache_path: Path,
    encoder: Encoder | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[RoutingReport, dict[str, list[Example]]]:
    """Evaluate the baselines and every learner in `learner_names` (which must include `router`)."""
    if not datasets:  # `--datasets ""` evaluated nothing and exited 0
        raise ConfigError(f"no routing dataset to evaluate; choose among {', '.join(DATASETS)}")
    specs = [lrn.learner(name) for name in learner_names]
    if router not in learner_names:
        specs.append(lrn.learner(router))
    report = RoutingReport(router, k, seed, {})
    loaded: dict[str, list[Example]] = {}
    for name in datasets:
        examples = load_dataset(data_dir, name)
        loaded[name] = examples
        needs_embeddings = any(spec.embed for spec in specs)
        embeddings = dataset_embeddings(examples, cache_path, encoder, progress) if needs_embeddings else None
        report.datasets[name] = evaluate_dataset(name, examples, embeddings, specs, router, k, seed)
    return report, loaded


def train_artifact(
    report: RoutingReport,
    loaded: dict[str, list[Example]],
    out: Path,
    *,
    cache_path: Path,
    encoder: Encoder | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Fit `report.router` on every evaluated example and save it, calibrated on the pooled out-of-fold
    predictions of this evaluation."""
    from margin.routing.train import build_router

    spec = lrn.learner(report.router)
    examples = [e for name in report.datasets for e in loaded[name]]
    oof = np.concatenate([report.datasets[name].oof[spec.name] for name in report.datasets])
    embeddings = dataset_embeddings(examples, cache_path, encoder, None) if spec.embed else None
    router = build_router(spec, examples, embeddings, oof, {"k": report.k, "seed": report.seed, **(meta or {})})
    return router.save(out)
