"""`margin eval cache`: hit rate and false-hit rate of the semantic cache on labelled question pairs.

Protocol. The pairs are split at random (seeded) into a calibration part and a test part. In each part the
cache is populated with every distinct side-`a` text (one scope, one context), then each pair's side `b` is
a query answered by the nearest populated entry among ALL the part's `a` texts, found by the cache's own
index (usearch HNSW once a bucket holds more than 2,048 entries), not only its own pair's `a`. A query is a
hit when that similarity is ≥ the threshold. A hit is correct when the served text is the query text
itself or the two texts form a pair labelled duplicate anywhere in the file (either order); every other
hit is a false hit, including a served `a` that is in fact a paraphrase but was never labelled, so the
false-hit rate is an upper estimate. Rates are per query: hit rate = hits / queries, false-hit rate =
false hits / queries, precision = correct hits / hits.

The calibrated threshold for δ comes from the calibration part only (`calibrate_threshold`, 95 % confidence)
and is scored on the test part, next to fixed thresholds and the in-hindsight best threshold on the test
part (an oracle, not achievable).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from margin.cache.calibration import calibrate_threshold, empirical_threshold
from margin.cache.semantic import SemanticCache
from margin.datafiles import read_lines, repo_data
from margin.errors import InvalidRequest

DELTAS = (0.005, 0.01, 0.02, 0.05)
FIXED_THRESHOLDS = (0.80, 0.85, 0.90, 0.95)
SHIPPED_DELTAS = (0.005, 0.01, 0.02, 0.05, 0.1)
SCOPE, CONTEXT = "eval", "-"
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PairSet:
    """Pairs as indices into `texts` (distinct texts, first-seen order over a, b of each pair)."""

    texts: list[str]
    a: IntArray
    b: IntArray
    duplicate: npt.NDArray[np.bool_]
    positives: frozenset[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.a)


def pairs_from_records(records: Sequence[dict[str, Any]]) -> PairSet:
    index: dict[str, int] = {}
    a: list[int] = []
    b: list[int] = []
    dup: list[bool] = []
    for record in records:
        if not isinstance(record, dict):
            raise InvalidRequest(f"pair record {len(a) + 1} is not an object")
        if record.get("duplicate") not in (True, False, 0, 1):
            raise InvalidRequest(f"pair record {len(a) + 1}: duplicate must be true/false/0/1")
        try:
            a.append(index.setdefault(str(record["a"]), len(index)))
            b.append(index.setdefault(str(record["b"]), len(index)))
            dup.append(bool(record["duplicate"]))
        except KeyError as exc:
            raise InvalidRequest(f"pair record without {exc}") from exc
    positives = {(x, y) for x, y, d in zip(a, b, dup, strict=True) if d}
    positives |= {(y, x) for x, y in positives}
    return PairSet(list(index), np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(dup), frozenset(positives))


def default_pairs() -> Path:
    """The QQP pairs bundled in the repository (`data/cache/qqp_pairs.jsonl.gz`, see `data/README.md`)."""
    return repo_data("cache", "qqp_pairs.jsonl.gz")


def load_pairs(path: str | Path, limit: int | None = None) -> PairSet:
    """The pairs of a JSONL file (plain or .gz); `limit` keeps the first `limit` (the file order is random)."""
    try:
        lines = read_lines(Path(path), limit)  # the first `limit` only are read (and decompressed)
        return pairs_from_records([orjson.loads(line) for line in lines if line.strip()])
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise InvalidRequest(f"cannot read pairs from {path}: {exc}") from exc


@dataclass(frozen=True)
class Served:
    """Per query: similarity of the served (nearest) entry and whether serving it is correct."""

    similarity: npt.NDArray[np.float64]
    correct: npt.NDArray[np.bool_]


def _no_encoder(texts: list[str]) -> npt.NDArray[np.float32]:
    raise InvalidRequest("the evaluation passes vectors; it never encodes inside the cache")


def serve_nearest(pairs: PairSet, rows: IntArray, vectors: npt.NDArray[np.float32]) -> Served:
    """Populate a cache with the distinct `a` texts of `rows`, then query each row's `b` (see module doc)."""
    entries = list(dict.fromkeys(int(i) for i in pairs.a[rows]))
    cache = SemanticCache(_no_encoder, threshold=-1.0, max_entries=len(entries) + 1, ttl_s=None, dim=vectors.shape[1])
    for text in entries:
        cache.add_vector(SCOPE, CONTEXT, vectors[text], str(text))
    similarity = np.zeros(len(rows), dtype=np.float64)
    correct = np.zeros(len(rows), dtype=bool)
    for n, row in enumerate(rows):
        query = int(pairs.b[row])
        hit = cache.nearest(SCOPE, CONTEXT, vectors[query])
        if hit is None:
            similarity[n] = -1.0
            continue
        served = int(hit.key)
        similarity[n] = hit.similarity
        correct[n] = served == query or (served, query) in pairs.positives
    return Served(similarity, correct)


@dataclass(frozen=True)
class Metrics:
    threshold: float
    queries: int
    hits: int
    false_hits: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.queries if self.queries else 0.0

    @property
    def precision(self) -> float:
        return (self.hits - self.false_hits) / self.hits if self.hits else 1.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["threshold"] = self.threshold if np.isfinite(self.threshold) else None
        data.update(hit_rate=self.hit_rate, false_hit_rate=self.false_hit_rate, precision=self.precision)
        return data


def metrics_at(served: Served, threshold: float) -> Metrics:
    hit = served.similarity >= threshold
    return Metrics(float(threshold), len(hit), int(hit.sum()), int((hit & ~served.correct).sum()))


@dataclass
class DeltaResult:
    delta: float
    calibrated: Metrics
    calibration_part: Metrics
    oracle: Metrics
    best_fixed: Metrics | None

    @property
    def meets_delta(self) -> bool:
        return self.calibrated.false_hit_rate <= self.delta

    @property
    def beats_fixed(self) -> bool:
        return self.best_fixed is None or self.calibrated.hit_rate > self.best_fixed.hit_rate

    def to_json(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "test": self.calibrated.to_json(),
            "calibration_part": self.calibration_part.to_json(),
            "oracle_on_test": self.oracle.to_json(),
            "best_fixed_meeting_delta": self.best_fixed.to_json() if self.best_fixed else None,
            "meets_delta": self.meets_delta,
            "beats_best_fixed": self.beats_fixed,
        }


@dataclass
class SplitResult:
    seed: int
    calibration_queries: int
    test_queries: int
    test_entries: int
    deltas: list[DeltaResult] = field(default_factory=list)
    fixed: list[Metrics] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "calibration_queries": self.calibration_queries,
            "test_queries": self.test_queries,
            "test_entries": self.test_entries,
            "calibrated": [d.to_json() for d in self.deltas],
            "fixed": [m.to_json() for m in self.fixed],
        }


def split_rows(n: int, calib_fraction: float, seed: int) -> tuple[IntArray, IntArray]:
    if not 0.0 < calib_fraction < 1.0:
        raise InvalidRequest("calib_fraction must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    cut = round(n * calib_fraction)
    return np.sort(order[:cut]), np.sort(order[cut:])


def score_split(
    calibration: Served, test: Served, deltas: Sequence[float], fixed: Sequence[float], confidence: float
) -> tuple[list[DeltaResult], list[Metrics]]:
    fixed_metrics = [metrics_at(test, t) for t in fixed]
    results = []
    for delta in deltas:
        sims, ok = calibration.similarity.tolist(), calibration.correct.tolist()
        threshold = calibrate_threshold(sims, ok, delta, confidence=confidence)
        oracle = empirical_threshold(test.similarity.tolist(), test.correct.tolist(), delta)
        meeting = [m for m in fixed_metrics if m.false_hit_rate <= delta]
        best = max(meeting, key=lambda m: m.hit_rate) if meeting else None
        results.append(
            DeltaResult(
                delta, metrics_at(test, threshold), metrics_at(calibration, threshold), metrics_at(test, oracle), best
            )
        )
    return results, fixed_metrics


def evaluate_split(
    pairs: PairSet,
    vectors: npt.NDArray[np.float32],
    *,
    seed: int,
    calib_fraction: float = 0.5,
    deltas: Sequence[float] = DELTAS,
    fixed: Sequence[float] = FIXED_THRESHOLDS,
    confidence: float = 0.95,
) -> tuple[SplitResult, Served]:
    """One random split; returns the scored split and the calibration part's served records."""
    calib_rows, test_rows = split_rows(len(pairs), calib_fraction, seed)
    calibration = serve_nearest(pairs, calib_rows, vectors)
    test = serve_nearest(pairs, test_rows, vectors)
    entries = len(set(pairs.a[test_rows].tolist()))
    result = SplitResult(seed, len(calib_rows), len(test_rows), entries)
    result.deltas, result.fixed = score_split(calibration, test, deltas, fixed, confidence)
    return result, calibration


def embed_pairs(pairs: PairSet, vectors_dir: Path | None, progress: Callable[[int, int], None] | None) -> Any:
    from margin.cache.encoder import default_encoder, encode_cached

    return encode_cached(pairs.texts, default_encoder(), vectors_dir, progress=progress)


def check_rates(calib_fraction: float, deltas: Sequence[float], confidence: float) -> None:
    """Before anything is read or embedded: shares above 0 and below 1 (a delta may be 1); NaN is none."""
    for name, value in (("calib_fraction", calib_fraction), ("confidence", confidence)):
        if not 0.0 < value < 1.0:
            raise InvalidRequest(f"{name} must be in (0, 1), got {value}")
    bad = [d for d in deltas if not 0.0 < d <= 1.0]
    if bad or not deltas:
        raise InvalidRequest(f"every delta must be in (0, 1], got {bad or 'none'}")


def run_cache_eval(
    path: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    calib_fraction: float = 0.5,
    deltas: Sequence[float] = DELTAS,
    fixed: Sequence[float] = FIXED_THRESHOLDS,
    confidence: float = 0.95,
    vectors_dir: Path | None = None,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The whole evaluation as JSON (see module doc); `calibration` holds thresholds for `SHIPPED_DELTAS`
    from the first seed's calibration part, the content of the shipped calibration file."""
    check_rates(calib_fraction, deltas, confidence)
    pairs = load_pairs(path, limit)
    if len(pairs) < 2:
        raise InvalidRequest(f"{path}: needs at least 2 pairs, has {len(pairs)}")
    started = time.perf_counter()
    vectors = embed_pairs(pairs, vectors_dir, progress)
    embed_s = time.perf_counter() - started
    splits, first_calibration = [], None
    for seed in seeds:
        result, calibration = evaluate_split(
            pairs, vectors, seed=seed, calib_fraction=calib_fraction, deltas=deltas, fixed=fixed, confidence=confidence
        )
        splits.append(result)
        first_calibration = first_calibration or calibration
    assert first_calibration is not None
    return build_report(pairs, splits, first_calibration, confidence, embed_s, time.perf_counter() - started - embed_s)


def build_report(
    pairs: PairSet, splits: list[SplitResult], calibration: Served, confidence: float, embed_s: float, eval_s: float
) -> dict[str, Any]:
    sims, ok = calibration.similarity.tolist(), calibration.correct.tolist()
    shipped = {str(d): calibrate_threshold(sims, ok, d, confidence=confidence) for d in SHIPPED_DELTAS}
    all_met = all(d.meets_delta for s in splits for d in s.deltas)
    all_beat = all(d.beats_fixed for s in splits for d in s.deltas)
    return {
        "pairs": len(pairs),
        "duplicates": int(pairs.duplicate.sum()),
        "distinct_texts": len(pairs.texts),
        "protocol": __doc__.split("Protocol. ")[1].split("\n\nThe calibrated")[0].replace("\n", " ") if __doc__ else "",
        "confidence": confidence,
        "embed_s": round(embed_s, 1),
        "eval_s": round(eval_s, 1),
        "all_splits_meet_delta": all_met,
        "all_splits_beat_best_fixed": all_beat,
        "splits": [s.to_json() for s in splits],
        "calibration": {
            "about": "semantic-cache cosine thresholds per target false-hit rate δ (margin.cache.load_calibration)",
            "built_with": "margin eval cache [--pairs <pairs.jsonl>] [--limit N] --write-calibration <this file>",
            "pairs_file_pairs": len(pairs),
            "seed": splits[0].seed,
            "calibration_queries": splits[0].calibration_queries,
            "confidence": confidence,
            "thresholds": shipped,
        },
    }
