"""Build a shippable router: fit the linear learner on every (non-contaminated) example and calibrate its
thresholds on out-of-fold predictions, so `threshold_for` reflects held-out behaviour, not training fit."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from margin.errors import ConfigError
from margin.routing import learners as lrn
from margin.routing.learned import Calibration, LearnedRouter
from margin.routing.metrics import pgr_curve, summary
from margin.routing.routellm import Example

FloatArray = npt.NDArray[np.float64]
CALIBRATION_POINTS = 1001


def build_router(
    spec: lrn.LearnerSpec,
    examples: Sequence[Example],
    embeddings: FloatArray | None,
    oof_p_weak_ok: FloatArray,
    meta: dict[str, Any] | None = None,
) -> LearnedRouter:
    """Fit `spec` (a linear learner) on `examples`; `oof_p_weak_ok` are the same learner's out-of-fold
    predictions for the same examples, in the same order."""
    if spec.kind != "linear":
        raise ConfigError(f"only linear learners ship as an artifact; {spec.name} is {spec.kind}")
    if len(oof_p_weak_ok) != len(examples):
        raise ConfigError("out-of-fold predictions must match the examples one to one")
    prompts = [e.prompt for e in examples]
    labels = np.asarray([e.weak_adequate for e in examples], dtype=np.float64)
    model = lrn.fit_linear(spec, prompts, embeddings if spec.embed else None, labels)
    curve = pgr_curve(1.0 - np.asarray(oof_p_weak_ok), [e.weak_ok for e in examples], [e.strong_ok for e in examples])
    _, pgr = curve.sampled(CALIBRATION_POINTS)
    calibration = Calibration.from_predictions(np.asarray(oof_p_weak_ok), np.asarray(pgr))
    info = {
        "learner": spec.name,
        "features": {"embedding": spec.embed, "ngrams": spec.ngrams, "structure": spec.structure},
        "c": spec.c,
        "label": "weak adequate = weak correct or strong wrong",
        "trained_on": dict(sorted(Counter(_dataset(e) for e in examples).items())),
        "calibration_oof": summary(curve),
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        **(meta or {}),
    }
    return LearnedRouter(model, calibration, info)


def _dataset(example: Example) -> str:
    return "gsm8k" if example.group == "gsm8k" else "mmlu"
