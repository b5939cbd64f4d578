"""`margin plan catalog …`: the catalogs as rows (with each entry's source and date) for a table or JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from margin.economics.carbon import GridTable
from margin.errors import InvalidRequest
from margin.plan.catalog import Catalog
from margin.plan.memory import kv_bytes_per_token, params
from margin.terminal import plain

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


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _hardware_table(data: dict[str, Any]) -> list[Table]:
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
    return [table]


def _regions_table(data: dict[str, Any]) -> list[Table]:
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
    return [table]


def _models_table(data: dict[str, Any]) -> list[Table]:
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
    return [table]


def _sources_table(title: str, sources: dict[str, Any]) -> Table:
    table = Table("key", "source", "as of", title=title)
    for key, source in sources.items():
        table.add_row(key, plain(source["source"]), f"{source['confidence']} {source['as_of']}")
    return table


def _formats_tables(data: dict[str, Any]) -> list[Table]:
    weights = Table("weights", "bits", "math", "norm bits", "CPU tiled GEMM", "embedding", "note", title="weights")
    for key, w in data["weights"].items():
        tiled = "yes" if w["cpu_tiled_gemm"] else "-"
        embedding, note = w["embedding"] or "-", plain(w["note"] or "-")
        weights.add_row(key, f"{w['bits']:g}", w["compute"], f"{w['norm_bits']:g}", tiled, embedding, note)
    kv = Table("KV", "bits", "overhead B/vector", "overhead bits/coordinate", title="KV cache")
    for key, k in data["kv"].items():
        overhead = (f"{k['overhead_bytes_per_vector']:g}", f"{k['overhead_bits_per_coordinate']:g}")
        kv.add_row(key, f"{k['bits']:g}", *overhead)
    return [weights, kv, _sources_table("sources", data["sources"])]


def _efficiency_tables(data: dict[str, Any]) -> list[Table]:
    tables = []
    columns = ("compute", "compute_decode", "compute_untiled", "memory", "interconnect")
    for part in ("classes", "hardware"):
        table = Table(
            "class" if part == "classes" else "hardware",
            *(c.replace("_", " ") for c in columns),
            "collective s",
            "step overhead s",
            "power busy",
            "source",
            title="per hardware class" if part == "classes" else "per hardware (overrides its class)",
        )
        for key, e in data[part].items():
            source = e["source"]
            table.add_row(
                key,
                *(_num(e[c]) for c in columns),
                _num(e["collective_latency_s"]),
                _num(e["step_overhead_s"]),
                _num(e["power_busy_fraction"]),
                f"{source['confidence']} {source['as_of']}",
            )
        tables.append(table)
    engines = Table("engine", "max batch", "max tokens/step", "memory fraction", "source", title="engines")
    for key, e in data["engines"].items():
        engines.add_row(
            key, str(e["max_batch"]), str(e["max_tokens_per_step"]), f"{e['memory_fraction']:g}", plain(e["source"])
        )
    return [*tables, engines]


TABLES = {
    "hardware": _hardware_table,
    "regions": _regions_table,
    "models": _models_table,
    "formats": _formats_tables,
    "efficiency": _efficiency_tables,
}


def print_listing(console: Console, what: str, data: dict[str, Any]) -> None:
    """The listing as tables (`--json` prints `data` itself), then the catalog's version."""
    for table in TABLES[what](data):
        console.print(table)
    console.print(data["version"] if "rows" in data else data["versions"][what])
