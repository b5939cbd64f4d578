from __future__ import annotations

import pytest

from margin.plan.catalog import Catalog, EfficiencyClass, Provenance


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.bundled()


@pytest.fixture(scope="session")
def ideal() -> EfficiencyClass:
    """Peaks reached exactly, no step overhead: hand-computed cases read straight off the roofline."""
    source = Provenance(source="test", as_of="2026-12-04", confidence="estimate")
    return EfficiencyClass(
        compute=1.0,
        memory=1.0,
        interconnect=1.0,
        collective_latency_s=0.0,
        step_overhead_s=0.0,
        power_busy_fraction=1.0,
        source=source,
    )
