from __future__ import annotations

import pytest

from margin.kv.methods import DEFAULT_METHODS, get_method, measured_bytes_per_token

# Per head-vector bytes at d = 64, keys + values, times 30 layers × 3 KV heads.
EXPECTED = {
    "fp16": 2 * 128,
    "fp8": 2 * 64,
    "kivi-4": 2 * (32 + 2 * 4),  # keys per channel (scale+min per 32 tokens), values per token (per 32 channels)
    "had-int4": 2 * 2 * (16 + 2),
    "had-int3": 2 * 2 * (12 + 2),
    "tq-mse-4": 2 * (32 + 2),
    "tq-mse-3": 2 * (24 + 2),
    "tq-mse-2.5": 2 * (12 + 2 + 8 + 2),
    "tq-prod-3": (16 + 8 + 4) + (24 + 2),
}


@pytest.mark.parametrize(("name", "per_vector"), EXPECTED.items())
def test_measured_bytes_per_token(name: str, per_vector: int) -> None:
    assert measured_bytes_per_token(get_method(name)) == per_vector * 90


def test_incomplete_token_group_is_counted_in_fp16() -> None:
    full = measured_bytes_per_token(get_method("kivi-2"), tokens=64)
    ragged = measured_bytes_per_token(get_method("kivi-2"), tokens=40)
    assert ragged > full


def test_names() -> None:
    for name in DEFAULT_METHODS:
        assert get_method(name).name == name
    assert get_method("tq-mse-3.5").nominal_bits == 3.5
    assert get_method("tq-prod-4-had").nominal_bits == 4
    for bad in ("tq-mse-0", "int4", "tq-mse-3.25", "kivi-9"):
        with pytest.raises(ValueError, match="unknown KV method"):
            get_method(bad)


def test_build_gives_fresh_codecs_per_layer() -> None:
    layers = get_method("tq-mse-3.5").build(64, 3)
    assert len(layers) == 3
    assert layers[0].key is not layers[1].key
    assert layers[0].key.bits == 3.5
    prod = get_method("tq-prod-3").build(64, 1)[0]
    assert prod.key.name == "tq-prod-3"
    assert prod.value.name == "tq-mse-3"
