"""`margin plan catalog …`: the catalogs as rows (with each entry's source and date) for a table or JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from margin.economics.carbon import GridTable
from margin.errors import InvalidRequest
from margin.plan.catalog import Catalog
from margin.plan.memory import kv_bytes_per_token, params

WHAT = ("hardware", "regions", "models", "formats", "efficiency")


def _hardware(catalog: Catalog) -> list[dict[str, Any]]:
    return [{"key": key, **hw.model_dump(mode="json", exclude_none=True)} for key, hw in catalog.hardware.items()]


def _regions(catalog: Catalog) -> list[dict[str, Any]]:
    grid, rows = GridTable.bundled(), []
    for key, region in catalog.regions.items():
        intensity = grid.intensity(region.economics())
        rows.append(
            {
                "key": key,
                **region.model_dump(mode="json", exclude_none=True),
                "grid_g_per_kwh_resolved": intensity.g_per_kwh,
                "grid_source": intensity.source,
            }
        )
    return rows


def _models(catalog: Catalog) -> list[dict[str, Any]]:
    rows = []
    for key, model in catalog.models.items():
        p = params(model)
        rows.append(
            {
                "key": key,
                **model.model_dump(mode="json", exclude_none=True),
                "params_computed": p.total,
                "params_active_computed": p.active,
                "kv_bytes_per_token_fp16": kv_bytes_per_token(model, catalog.get_kv("fp16")),
            }
        )
    return rows


def listing(catalog: Catalog, what: str) -> dict[str, Any]:
    if what not in WHAT:
        raise InvalidRequest(f"unknown catalog {what!r}: use one of {', '.join(WHAT)}")
    if what == "formats":
        return {"versions": catalog.versions, **catalog.formats.model_dump(mode="json", by_alias=True)}
    if what == "efficiency":
        return {"versions": catalog.versions, **catalog.efficiency.model_dump(mode="json", by_alias=True)}
    rows = {"hardware": _hardware, "regions": _regions, "models": _models}[what](catalog)
    return {"version": catalog.versions[what], "rows": rows}


def print_listing(console: Console, what: str, data: dict[str, Any]) -> None:
    if what == "hardware":
        table = Table("key", "name", "bf16/fp8/int8 TFLOPS", "GB", "GB/s", "W", "link GB/s", "prices", "source")
        for r in data["rows"]:
            peaks = "/".join(str(r["peak_tflops"].get(d, "-")) for d in ("bf16", "fp8", "int8"))
            prices = ", ".join(f"{p['provider']} ${p['usd_per_hour']}" for p in r.get("prices", [])) or "-"
            if "purchase" in r:
                prices += f"; buy ${r['purchase']['usd_per_device']}"
            spec = r["spec"]
            table.add_row(
                r["key"],
                r["name"],
                peaks,
                f"{r['memory_gb']:g}",
                f"{r['memory_bw_gbs']:g}",
                f"{r['tdp_w']:g}",
                f"{r['interconnect_gbs']:g}",
                prices,
                f"{spec['confidence']} {spec['as_of']}",
            )
    elif what == "regions":
        table = Table("key", "provider", "jurisdiction", "g/kWh", "PUE", "$/kWh", "offers")
        for r in data["rows"]:
            table.add_row(
                r["key"],
                r["provider"],
                r["jurisdiction"],
                f"{r['grid_g_per_kwh_resolved']:g}",
                f"{r['pue']:g}",
                r["usd_per_kwh"],
                ", ".join(r["offers"]),
            )
    elif what == "models":
        table = Table(
            "key", "params (active)", "layers", "hidden", "heads/kv", "head_dim", "vocab", "context", "KV B/token fp16"
        )
        for r in data["rows"]:
            table.add_row(
                r["key"],
                f"{r['params_total'] / 1e9:.3g}B ({r['params_active'] / 1e9:.3g}B)",
                str(r["layers"]),
                str(r["hidden"]),
                f"{r['heads']}/{r['kv_heads']}",
                str(r["head_dim"]),
                str(r["vocab"]),
                f"{r['context']:,}",
                f"{r['kv_bytes_per_token_fp16']:,.0f}",
            )
    else:
        import orjson

        console.print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    console.print(table)
    console.print(data["version"])
