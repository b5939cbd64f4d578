from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from margin.errors import ConfigError, InvalidRequest
from margin.routing.features import structure_features
from margin.routing.learned import Calibration, LearnedRouter, cheapest_adequate
from margin.routing.learners import LinearModel, learner
from margin.routing.routellm import Example
from margin.routing.train import build_router


def toy_examples(n: int = 80) -> list[Example]:
    """Short arithmetic prompts: the weak model fails the long ones."""
    examples = []
    for i in range(n):
        long = i % 2 == 0
        text = f"Compute {i} + {i * 7} " + ("then multiply by 13 and divide by 7 " * 6 if long else "quickly")
        examples.append(Example(text, weak_ok=not long, strong_ok=True, group="gsm8k" if i % 4 else "algebra"))
    return examples


def small_router(tmp_path: Path | None = None) -> LearnedRouter:
    examples = toy_examples()
    oof = np.asarray([0.2 if not e.weak_ok else 0.9 for e in examples])
    return build_router(learner("lr-ngrams"), examples, None, oof, {"note": "toy"})


def test_artifact_round_trip(tmp_path: Path) -> None:
    router = small_router()
    path = router.save(tmp_path / "router.npz")
    loaded = LearnedRouter.load(path)
    prompts = [e.prompt for e in toy_examples(10)]
    assert np.allclose(loaded.p_weak_ok_batch(prompts), router.p_weak_ok_batch(prompts), atol=1e-5)
    assert loaded.meta["learner"] == "lr-ngrams" and loaded.meta["note"] == "toy"
    assert loaded.meta["trained_on"] == {"gsm8k": 60, "mmlu": 20}
    assert not loaded.needs_embedding
    assert np.array_equal(loaded.calibration.threshold, router.calibration.threshold)
    short, long = loaded.p_weak_ok("Compute 1 + 7 quickly"), loaded.p_weak_ok(prompts[0])
    assert 0.0 < long < 0.5 < short < 1.0


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        LearnedRouter.load(tmp_path / "missing.npz")
    bogus = tmp_path / "bogus.npz"
    np.savez(bogus, meta=np.asarray('{"format": "other"}'))
    with pytest.raises(ConfigError):
        LearnedRouter.load(bogus)


def calibrated_router() -> LearnedRouter:
    oof = np.linspace(0.0, 0.99, 100)  # p_weak_ok of 100 held-out prompts
    pgr = np.linspace(0.0, 1.0, 1001) ** 0.5  # PGR at strong shares 0, 0.001, …, 1
    model = LinearModel(0.0, np.zeros(0), np.zeros(0), np.zeros(0))
    return LearnedRouter(model, Calibration.from_predictions(oof, pgr), {})


def test_threshold_for_strong_share() -> None:
    router, oof = calibrated_router(), np.linspace(0.0, 0.99, 100)
    for share in (0.0, 0.1, 0.37, 1.0):
        threshold = router.threshold_for("strong_share", share)
        assert np.mean(oof < threshold) == pytest.approx(share)
    assert router.threshold_for("strong_share", 2.0) == router.threshold_for("strong_share", 1.0)


def test_threshold_for_quality_floor() -> None:
    router, oof = calibrated_router(), np.linspace(0.0, 0.99, 100)
    threshold = router.threshold_for("quality_floor", 0.5)  # PGR = sqrt(share) reaches 0.5 at share 0.25
    assert np.mean(oof < threshold) == pytest.approx(0.25)
    assert router.threshold_for("quality_floor", 1.0) == np.inf  # everything to the strong model


def test_threshold_for_budget() -> None:
    router, oof = calibrated_router(), np.linspace(0.0, 0.99, 100)
    # $0.001 weak, $0.011 strong: a $0.003 mean per call allows 20% strong calls
    threshold = router.threshold_for("budget", 0.003, weak_cost=0.001, strong_cost=0.011)
    assert np.mean(oof < threshold) == pytest.approx(0.2)
    assert router.threshold_for("budget", 0.0005, weak_cost=0.001, strong_cost=0.011) == 0.0
    with pytest.raises(InvalidRequest):
        router.threshold_for("budget", 0.003)
    with pytest.raises(InvalidRequest):
        router.threshold_for("latency", 0.5)


def test_cheapest_adequate_ladder() -> None:
    assert cheapest_adequate([0.9, 0.9], [0.5, 0.5]) == 0
    assert cheapest_adequate([0.2, 0.8], [0.5, 0.5]) == 1
    assert cheapest_adequate([0.2, 0.3], [0.5, 0.5]) == 2
    with pytest.raises(InvalidRequest):
        cheapest_adequate([0.2], [0.5, 0.5])


def test_structure_features_shape() -> None:
    rows = structure_features(["What is 2+2?\nA. 3\nB. 4\nAnswer:", ""])
    assert rows.shape == (2, 7)
    assert rows[0, 5] == 2.0 and rows[1, 0] == 0.0


def test_shipped_router_loads_and_scores() -> None:
    router = LearnedRouter.load()
    assert router.meta["learner"] == "lr-ngrams" and not router.needs_embedding
    p = router.p_weak_ok("What is the capital of France?")
    assert 0.0 < p < 1.0
    assert router.p_weak_ok_batch(["a", "b"]) == pytest.approx([router.p_weak_ok("a"), router.p_weak_ok("b")])
