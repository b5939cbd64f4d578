"""Semantic cache with an error bound: `SemanticCache` (scoped, bounded, TTL), `calibrate_threshold` /
`load_calibration` (δ → cosine threshold), and `default_encoder` (MiniLM from the builtin wheel, lazy)."""

from margin.cache.calibration import calibrate_threshold, load_calibration, threshold_for
from margin.cache.encoder import default_encoder
from margin.cache.semantic import SemanticCache, SemanticHit

__all__ = [
    "SemanticCache",
    "SemanticHit",
    "calibrate_threshold",
    "default_encoder",
    "load_calibration",
    "threshold_for",
]
