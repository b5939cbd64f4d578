"""The learners compared by `margin eval routing`, all predicting P(weak model adequate | prompt).

`linear` (logistic regression over any mix of MiniLM embedding, hashed n-grams and structure numbers) is the
one that ships: its weights are small and scoring is a dot product. kNN and an MLP over the embedding are
evaluated for comparison only (they would ship the training set or need sklearn at run time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from margin.errors import ConfigError
from margin.routing import ngrams
from margin.routing.features import STRUCTURE_NAMES, structure_features

FloatArray = npt.NDArray[np.float64]
NGRAM_DIM = 1 << 15


class Predictor(Protocol):
    def predict(self, prompts: Sequence[str], embeddings: FloatArray | None, counts: Any = None) -> FloatArray: ...


@dataclass(frozen=True)
class LearnerSpec:
    """A named learner: `kind` is linear | knn | mlp; the flags say which feature blocks it sees."""

    name: str
    kind: str
    embed: bool = False
    ngrams: bool = False
    structure: bool = True
    c: float = 1.0


LEARNERS = (
    LearnerSpec("lr-structure", "linear"),
    LearnerSpec("lr-ngrams", "linear", ngrams=True),
    LearnerSpec("lr-minilm", "linear", embed=True),
    LearnerSpec("lr-minilm-ngrams", "linear", embed=True, ngrams=True),
    LearnerSpec("knn-minilm", "knn", embed=True, structure=False),
    LearnerSpec("mlp-minilm", "mlp", embed=True),
)


def learner(name: str) -> LearnerSpec:
    for spec in LEARNERS:
        if spec.name == name:
            return spec
    raise ConfigError(f"unknown learner {name!r}; expected one of {', '.join(s.name for s in LEARNERS)}")


def sigmoid(z: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


@dataclass
class LinearModel:
    """Logistic regression over standardised structure numbers, the embedding and/or hashed n-grams."""

    bias: float
    struct_mean: FloatArray
    struct_std: FloatArray
    struct_w: FloatArray
    embed_w: FloatArray | None = None
    idf: FloatArray | None = None
    ngram_w: FloatArray | None = None

    def logits(self, prompts: Sequence[str], embeddings: FloatArray | None, counts: Any = None) -> FloatArray:
        """`counts` (the prompts' `ngrams.count_matrix`) is a vectorised shortcut for evaluations."""
        z = np.full(len(prompts), self.bias, dtype=np.float64)
        if self.struct_w.size:
            z += ((structure_features(prompts) - self.struct_mean) / self.struct_std) @ self.struct_w
        if self.embed_w is not None:
            if embeddings is None:
                raise ConfigError("this router needs prompt embeddings")
            z += embeddings @ self.embed_w
        if self.idf is not None and self.ngram_w is not None:
            if counts is not None:
                z += np.asarray(ngrams.tfidf(counts, self.idf) @ self.ngram_w, dtype=np.float64).ravel()
            else:
                z += np.asarray([ngrams.dot(text, self.idf, self.ngram_w) for text in prompts], dtype=np.float64)
        return z

    def predict(self, prompts: Sequence[str], embeddings: FloatArray | None, counts: Any = None) -> FloatArray:
        return sigmoid(self.logits(prompts, embeddings, counts))


def _design(
    spec: LearnerSpec, prompts: Sequence[str], embeddings: FloatArray | None, counts: Any = None
) -> tuple[Any, dict[str, Any]]:
    """Training matrix (dense or sparse) and the fitted preprocessing it used."""
    from scipy import sparse  # type: ignore[import-untyped]

    blocks: list[Any] = []
    prep: dict[str, Any] = {}
    if spec.structure:
        raw = structure_features(prompts)
        prep["mean"], prep["std"] = raw.mean(axis=0), np.where(raw.std(axis=0) > 1e-6, raw.std(axis=0), 1.0)
        blocks.append((raw - prep["mean"]) / prep["std"])
    if spec.embed:
        if embeddings is None:
            raise ConfigError(f"learner {spec.name} needs embeddings")
        blocks.append(embeddings)
    if spec.ngrams:
        counts = ngrams.count_matrix(prompts, NGRAM_DIM) if counts is None else counts
        prep["idf"] = ngrams.idf_weights(counts)
        blocks.append(ngrams.tfidf(counts, prep["idf"]))
    if spec.ngrams:
        return sparse.hstack([sparse.csr_matrix(b) for b in blocks], format="csr"), prep
    return np.hstack(blocks), prep


def logistic_regression(design: Any, labels: Any, c: float, max_iter: int = 500) -> tuple[FloatArray, float]:
    """L2-regularised logistic regression, sklearn's objective (C·Σ log-loss + ½‖w‖², intercept free), by
    L-BFGS on a dense or sparse design: one matrix-vector product per step, fast on hashed n-grams."""
    from scipy.optimize import minimize  # type: ignore[import-untyped]
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    y = np.asarray(labels, dtype=np.float64)
    sign = 2.0 * y - 1.0
    n_features = design.shape[1]

    def objective(theta: FloatArray) -> tuple[float, FloatArray]:
        w, b = theta[:-1], theta[-1]
        z = np.asarray(design @ w, dtype=np.float64).ravel() + b
        loss = c * float(np.sum(np.logaddexp(0.0, -sign * z))) + 0.5 * float(w @ w)
        residual = c * (sigmoid(z) - y)
        grad = np.empty_like(theta)
        grad[:-1] = np.asarray(design.T @ residual, dtype=np.float64).ravel() + w
        grad[-1] = float(residual.sum())
        return loss, grad

    start = np.zeros(n_features + 1, dtype=np.float64)
    # Multi-threaded BLAS spins on a busy 2-core machine and is 10x slower here; these products are small.
    with threadpool_limits(limits=1):
        result = minimize(objective, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    theta = np.asarray(result.x, dtype=np.float64)
    return theta[:-1], float(theta[-1])


def fit_linear(
    spec: LearnerSpec, prompts: Sequence[str], embeddings: FloatArray | None, labels: Any, counts: Any = None
) -> LinearModel:
    design, prep = _design(spec, prompts, embeddings, counts)
    weights, bias = logistic_regression(design, labels, spec.c)
    n_struct = len(STRUCTURE_NAMES) if spec.structure else 0
    n_embed = embeddings.shape[1] if spec.embed and embeddings is not None else 0
    empty = np.zeros(0, dtype=np.float64)
    return LinearModel(
        bias=bias,
        struct_mean=prep.get("mean", empty),
        struct_std=prep.get("std", empty),
        struct_w=weights[:n_struct],
        embed_w=weights[n_struct : n_struct + n_embed] if spec.embed else None,
        idf=prep.get("idf"),
        ngram_w=weights[n_struct + n_embed :] if spec.ngrams else None,
    )


@dataclass
class KnnModel:
    """Mean label of the k most cosine-similar training prompts, shrunk toward the training base rate."""

    train: FloatArray
    labels: FloatArray
    k: int = 50
    prior_weight: float = 5.0

    def predict(self, prompts: Sequence[str], embeddings: FloatArray | None, counts: Any = None) -> FloatArray:
        if embeddings is None:
            raise ConfigError("kNN needs embeddings")
        base = float(self.labels.mean())
        out = np.empty(embeddings.shape[0], dtype=np.float64)
        for start in range(0, embeddings.shape[0], 1024):
            sims = embeddings[start : start + 1024] @ self.train.T
            top = np.argpartition(-sims, self.k, axis=1)[:, : self.k]
            hits = self.labels[top].sum(axis=1)
            out[start : start + 1024] = (hits + self.prior_weight * base) / (self.k + self.prior_weight)
        return out


@dataclass
class MlpModel:
    spec: LearnerSpec
    prep: dict[str, Any]
    net: Any

    def predict(self, prompts: Sequence[str], embeddings: FloatArray | None, counts: Any = None) -> FloatArray:
        parts = [((structure_features(prompts) - self.prep["mean"]) / self.prep["std"])]
        if embeddings is None:
            raise ConfigError("the MLP needs embeddings")
        return np.asarray(self.net.predict_proba(np.hstack([*parts, embeddings]))[:, 1], dtype=np.float64)


def fit(
    spec: LearnerSpec, prompts: Sequence[str], embeddings: FloatArray | None, labels: Any, counts: Any = None
) -> Predictor:
    """Fit the learner `spec` on one training split (`counts`: the split's n-gram count matrix, if at hand)."""
    y = np.asarray(labels, dtype=np.float64)
    if spec.kind == "linear":
        return fit_linear(spec, prompts, embeddings, y, counts)
    if embeddings is None:
        raise ConfigError(f"learner {spec.name} needs embeddings")
    if spec.kind == "knn":
        return KnnModel(embeddings, y)
    if spec.kind == "mlp":
        from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]

        design, prep = _design(spec, prompts, embeddings)
        net = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, early_stopping=True, max_iter=300, random_state=0)
        return MlpModel(spec, prep, net.fit(design, y.astype(np.int64)))
    raise ConfigError(f"unknown learner kind {spec.kind!r}")
