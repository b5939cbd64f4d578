"""The learned router behind the `cheapest-adequate` policy: P(the cheap model answers adequately | prompt).

A trained router is one .npz file (no pickle): logistic-regression weights over the feature blocks it was
trained with (hashed n-grams, structure numbers, optionally a MiniLM embedding), plus a calibration table from
out-of-fold predictions that maps a target (strong-call share, PGR quality floor, or $ per call) to a
threshold. Routing rule: send the prompt to the strong model when `p_weak_ok(prompt) < threshold`.
The shipped artifact (`data/router.npz`) is built by `margin eval routing --train-out PATH`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from margin.errors import ConfigError, InvalidRequest
from margin.routing.features import Encoder, MiniLMEncoder, normalize_rows
from margin.routing.learners import LinearModel

FloatArray = npt.NDArray[np.float64]
FORMAT = "margin-router/1"
TARGETS = ("strong_share", "quality_floor", "budget")
_ARRAYS = ("struct_mean", "struct_std", "struct_w", "embed_w", "idf", "ngram_w")


def shipped_path() -> Path:
    return Path(__file__).with_name("data") / "router.npz"


@dataclass(frozen=True)
class Calibration:
    """Out-of-fold behaviour at strong shares 0, 1/m, …, 1: the threshold giving that share, and its PGR."""

    share: FloatArray
    threshold: FloatArray
    pgr: FloatArray

    @classmethod
    def from_predictions(cls, p_weak_ok: FloatArray, pgr_at_share: FloatArray, points: int = 1001) -> Calibration:
        """`pgr_at_share`: PGR of the pooled out-of-fold curve sampled at the same `points` shares."""
        ordered = np.sort(np.asarray(p_weak_ok, dtype=np.float64))
        share = np.linspace(0.0, 1.0, points)
        index = np.rint(share * ordered.size).astype(np.int64)
        threshold = np.where(index < ordered.size, ordered[np.minimum(index, ordered.size - 1)], np.inf)
        return cls(share, threshold, np.asarray(pgr_at_share, dtype=np.float64))


def _strong_share_for_budget(value: float, weak_cost: float | None, strong_cost: float | None) -> float:
    if weak_cost is None or strong_cost is None or strong_cost <= weak_cost:
        raise InvalidRequest("a budget target needs weak_cost < strong_cost ($ per call of each model)")
    return (value - weak_cost) / (strong_cost - weak_cost)


class LearnedRouter:
    """Scores prompts with a trained linear model; the embedding encoder (if the model uses one) loads lazily."""

    def __init__(
        self, model: LinearModel, calibration: Calibration, meta: dict[str, Any], encoder: Encoder | None = None
    ) -> None:
        self.model = model
        self.calibration = calibration
        self.meta = meta
        self._encoder = encoder

    @property
    def needs_embedding(self) -> bool:
        return self.model.embed_w is not None

    @classmethod
    def load(cls, path: str | Path | None = None, encoder: Encoder | None = None) -> LearnedRouter:
        """Load a router artifact (None = the one shipped with margin). `encoder` maps texts to an (n, dim)
        array; pass the gateway's loaded MiniLM so it is shared. Only routers trained with embeddings use it."""
        target = Path(path) if path is not None else shipped_path()
        if not target.is_file():
            raise ConfigError(
                f"router artifact {target} does not exist (build one with `margin eval routing --train-out`)"
            )
        with np.load(target, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("format") != FORMAT:
                raise ConfigError(f"{target} is not a {FORMAT} artifact")
            arrays = {name: np.asarray(stored[name], dtype=np.float64) for name in _ARRAYS if name in stored}
            calibration = Calibration(
                *(np.asarray(stored[f"calib_{n}"], dtype=np.float64) for n in ("share", "threshold", "pgr"))
            )
        model = LinearModel(bias=float(meta["bias"]), **arrays)
        return cls(model, calibration, meta, encoder)

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {
            "meta": np.asarray(json.dumps({**self.meta, "format": FORMAT, "bias": self.model.bias}))
        }
        for name in _ARRAYS:
            value = getattr(self.model, name)
            if value is not None:
                arrays[name] = np.asarray(value, dtype=np.float64)
        for name in ("share", "threshold", "pgr"):
            arrays[f"calib_{name}"] = getattr(self.calibration, name)
        with target.open("wb") as handle:
            np.savez_compressed(handle, **arrays)
        return target

    def _embed(self, prompts: list[str], embeddings: Any) -> FloatArray | None:
        if not self.needs_embedding:
            return None
        if embeddings is None:
            if self._encoder is None:
                self._encoder = MiniLMEncoder(self.meta.get("encoder", "builtin:all-minilm-l6-v2"))
            embeddings = self._encoder(prompts)
        return normalize_rows(embeddings)

    def p_weak_ok_batch(self, prompts: list[str], embeddings: Any = None) -> list[float]:
        """P(weak adequate) per prompt; `embeddings` lets a caller that already embedded the prompts reuse them."""
        values = self.model.predict(prompts, self._embed(prompts, embeddings))
        return [float(v) for v in values]

    def p_weak_ok(self, prompt: str, embedding: Any = None) -> float:
        """Probability that the cheap model answers `prompt` adequately (not worse than the strong one)."""
        return self.p_weak_ok_batch([prompt], None if embedding is None else np.asarray(embedding).reshape(1, -1))[0]

    def threshold_for(
        self, target: str, value: float, *, weak_cost: float | None = None, strong_cost: float | None = None
    ) -> float:
        """The p_weak_ok threshold (strong model when p < threshold) that meets `target` on held-out data:
        strong_share: at most this share of calls go to the strong model (0…1);
        quality_floor: the smallest strong share whose PGR reaches `value` (0…1, as in CPT);
        budget: mean $ per call ≤ value, given each model's $ per call (`weak_cost`, `strong_cost`)."""
        if target not in TARGETS:
            raise InvalidRequest(f"unknown routing target {target!r}; expected one of {', '.join(TARGETS)}")
        if not math.isfinite(value):
            raise InvalidRequest("a routing target value must be a finite number")
        calib = self.calibration
        if target == "quality_floor":
            reached = np.nonzero(calib.pgr >= value - 1e-12)[0]
            share = float(calib.share[reached[0]]) if reached.size else 1.0
        elif target == "budget":
            share = _strong_share_for_budget(value, weak_cost, strong_cost)
        else:
            share = value
        share = min(max(share, 0.0), 1.0)
        index = int(np.searchsorted(calib.share, share + 1e-12, side="right")) - 1
        return float(calib.threshold[max(index, 0)])


def cheapest_adequate(p_ok: Sequence[float], thresholds: Sequence[float]) -> int:
    """Ladder rule (cheap → strong): the first rung whose P(adequate) clears its threshold, else the last rung.
    `p_ok[i]`/`thresholds[i]` are for rung i; the last rung (the strongest) needs no score."""
    if len(p_ok) != len(thresholds):
        raise InvalidRequest("one threshold per scored rung")
    for rung, (p, threshold) in enumerate(zip(p_ok, thresholds, strict=True)):
        if p >= threshold:
            return rung
    return len(p_ok)
