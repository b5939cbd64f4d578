"""The `margin serve` config that `margin models quantize --config-out` writes (no model needed)."""

from __future__ import annotations

from margin.config import parse_settings
from margin.models.cli import gateway_config
from margin.models.quantize import VariantFile, canonical


def test_one_llamacpp_backend_and_model_per_variant_with_the_default_local_economics() -> None:
    variants = [
        VariantFile("Q4_1", "builtin:smollm2-135m-q4_1", 1, "x", None, None),
        VariantFile("Q8_0", "/models/smollm2-135m-q8_0.gguf", 1, "y", 0.0, None),
    ]
    settings = parse_settings(gateway_config(variants, threads=2))
    assert sorted(settings.models) == ["smollm2-q4_1", "smollm2-q8_0"]
    backend = settings.backends["local-q8_0"]
    assert backend.kind == "llamacpp" and backend.model_file == "/models/smollm2-135m-q8_0.gguf"
    assert backend.threads == 2 and backend.hardware is not None and str(backend.hardware.usd_per_hour) == "0.05"
    assert settings.models["smollm2-q4_1"].backend == "local-q4_1"


def test_type_aliases() -> None:
    assert canonical("q3_k") == "Q3_K_M" and canonical("Q2_K") == "Q2_K" and canonical("q8_0") == "Q8_0"
