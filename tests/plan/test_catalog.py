"""The bundled catalogs: complete, cross-referenced, every number with a source and a date."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from margin.errors import ConfigError
from margin.plan.catalog import Catalog
from margin.plan.memory import params

REQUIRED_HARDWARE = {
    "h100-sxm",
    "h200",
    "b200",
    "a100-80gb",
    "l4",
    "l40s",
    "mi300x",
    "tpu-v5e",
    "tpu-v6e",
    "inferentia2",
    "trainium2",
    "groq-lpu",
    "apple-m2-ultra",
    "cpu-x86-32c",
    "cpu-this-machine",
}
REQUIRED_MODELS = {"smollm2-135m", "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mixtral-8x7b", "qwen3-30b-a3b"}


def test_issue_hardware_and_models_are_present(catalog: Catalog) -> None:
    assert set(catalog.hardware) >= REQUIRED_HARDWARE
    assert set(catalog.models) >= REQUIRED_MODELS
    assert any(m.moe is not None for m in catalog.models.values())


def test_every_number_has_a_source_a_date_and_estimates_are_named(catalog: Catalog) -> None:
    for key, hw in catalog.hardware.items():
        assert hw.spec.source and hw.spec.as_of[:4].isdigit(), key
        assert hw.prices or hw.purchase, f"{key} has neither a price nor a purchase price"
        for price in hw.prices:
            assert price.as_of[:4].isdigit() and price.source, (key, price.provider)
        dumped = hw.model_dump()
        for field in hw.estimated:  # every field named as an estimate exists
            head, _, dtype = field.partition(".")
            assert head in dumped and (not dtype or dtype in dumped[head]), (key, field)
        if hw.spec.confidence == "estimate" or "estimate" in (hw.notes or ""):
            assert hw.estimated, key


def test_model_shapes_reproduce_the_published_parameter_counts(catalog: Catalog) -> None:
    for key, model in catalog.models.items():
        p = params(model)
        assert p.total == pytest.approx(model.params_total, rel=0.02), key
        assert p.active == pytest.approx(model.params_active, rel=0.03), key


def test_regions_resolve_grid_intensity_from_margins_table(catalog: Catalog) -> None:
    from margin.economics.carbon import GridTable

    table = GridTable.bundled()
    for key, region in catalog.regions.items():
        intensity = table.intensity(region.economics())
        assert intensity.source != "world-average" or (region.grid_g_per_kwh is None and region.grid_zone is None), key
        assert intensity.g_per_kwh > 0
    assert table.intensity(catalog.get_region("gcp-europe-north1").economics()).g_per_kwh == 46.0


def test_unknown_keys_name_the_known_ones(catalog: Catalog) -> None:
    with pytest.raises(ConfigError, match="h100-sxm"):
        catalog.get_hardware("h1000")


def test_a_user_catalog_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    bundled = Path(__file__).resolve().parents[2] / "src/margin/plan/data/hardware.yaml"
    doc = yaml.safe_load(bundled.read_text())
    doc["hardware"]["h100-sxm"]["flops"] = 1
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="flops"):
        Catalog.load(hardware=path)


def test_a_region_offering_unknown_hardware_is_refused(tmp_path: Path) -> None:
    bundled = Path(__file__).resolve().parents[2] / "src/margin/plan/data/regions.yaml"
    doc = yaml.safe_load(bundled.read_text())
    doc["regions"]["local"]["offers"].append("quantum-9000")
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="quantum-9000"):
        Catalog.load(regions=path)
