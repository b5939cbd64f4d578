"""Every module here defines `STAGE`; the pipeline takes them all, sorted by `order`."""

from __future__ import annotations

import importlib
import pkgutil

from margin.pipeline.base import StageSpec


def discover() -> list[StageSpec]:
    specs = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "STAGE", None)
        if isinstance(spec, StageSpec):
            specs.append(spec)
    return sorted(specs, key=lambda s: s.order)
