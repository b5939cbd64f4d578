"""The planner's catalogs: hardware, regions, models, formats and efficiency priors, each a versioned YAML file in
`data/` whose numbers carry their source and date (`Provenance`). Loaded once per command (`Catalog.bundled()`),
validated with `extra="forbid"`; a user file can replace any of them (`Catalog.load(hardware=path, …)`)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from margin.config import RegionConfig
from margin.errors import ConfigError
from margin.userfiles import load_yaml, read_text, validation_message

Confidence = Literal["published", "recalled", "estimate", "measured"]
Kind = Literal["gpu", "tpu", "accelerator", "lpu", "soc", "cpu"]
DType = Literal["fp32", "bf16", "fp16", "fp8", "int8", "fp4"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Provenance(Strict):
    source: str
    url: str | None = None
    as_of: str
    confidence: Confidence


class Price(Strict):
    """On-demand $/device-hour from one provider, with the instance it was derived from."""

    provider: str
    instance: str
    usd_per_hour: Decimal = Field(gt=0)
    as_of: str
    confidence: Confidence
    source: str


class Purchase(Strict):
    usd_per_device: Decimal = Field(gt=0)
    as_of: str
    confidence: Confidence
    source: str


class Hardware(Strict):
    name: str
    kind: Kind
    efficiency_class: str
    peak_tflops: dict[DType, float]
    memory_gb: float = Field(gt=0)
    memory_bw_gbs: float = Field(gt=0)
    tdp_w: float = Field(gt=0)
    idle_w: float = Field(ge=0)
    interconnect: str
    interconnect_gbs: float = Field(ge=0)
    cores: int | None = Field(None, gt=0, description="CPUs: physical cores (threads scale compute)")
    memory_bw_gbs_per_core: float | None = Field(None, gt=0, description="CPUs: bandwidth one core reaches")
    spec: Provenance
    estimated: list[str] = []
    notes: str | None = None
    prices: list[Price] = []
    purchase: Purchase | None = None

    def price(self, provider: str) -> Price | None:
        return next((p for p in self.prices if p.provider == provider), None)


class Region(Strict):
    name: str
    provider: str
    jurisdiction: str
    grid_zone: str | None = None
    grid_g_per_kwh: float | None = Field(None, ge=0)
    pue: float = Field(ge=1.0)
    usd_per_kwh: Decimal = Field(ge=0)
    price_multiplier: Decimal = Field(Decimal(1), gt=0)
    colo_usd_per_kw_month: Decimal | None = Field(None, ge=0)
    amortization_years: float | None = Field(None, gt=0)
    offers: list[str]

    @property
    def owned(self) -> bool:
        return self.provider == "owned"

    def economics(self) -> RegionConfig:
        """The same region value margin's cost and carbon code takes."""
        return RegionConfig(
            jurisdiction=self.jurisdiction,
            grid_zone=self.grid_zone,
            grid_g_per_kwh=self.grid_g_per_kwh,
            pue=self.pue,
            usd_per_kwh=self.usd_per_kwh,
        )


class Moe(Strict):
    experts: int = Field(gt=1)
    active: int = Field(gt=0)
    expert_intermediate: int = Field(gt=0)


class Model(Strict):
    name: str
    params_total: int = Field(gt=0)
    params_active: int = Field(gt=0)
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate: int = Field(ge=0)
    vocab: int = Field(gt=0)
    context: int = Field(gt=0)
    tied_embeddings: bool
    moe: Moe | None = None
    source: Provenance

    @model_validator(mode="after")
    def _shape(self) -> Model:
        if self.moe is None and self.intermediate == 0:
            raise ValueError("a dense model needs `intermediate`")
        if self.heads % self.kv_heads:
            raise ValueError("heads must be a multiple of kv_heads")
        return self


class WeightFormat(Strict):
    bits: float = Field(gt=0)
    compute: DType
    norm_bits: float = Field(16, gt=0, description="1-D tensors (norms) stay unquantized")
    cpu_tiled_gemm: bool = Field(False, description="llama.cpp has a tiled CPU prompt-processing kernel for it")
    embedding: str | None = None
    note: str | None = None


class KvFormat(Strict):
    bits: float = Field(gt=0)
    overhead_bytes_per_vector: float = Field(0, ge=0)
    overhead_bits_per_coordinate: float = Field(0, ge=0)


class EfficiencyClass(Strict):
    """Fractions of the catalog's peaks an engine reaches. Above 1 means the peak understates this hardware
    (a CPU whose caches hold part of the weights beats its DRAM bandwidth)."""

    compute: float = Field(gt=0, le=4)
    compute_decode: float | None = Field(
        None, gt=0, le=4, description="Decode steps (matrix-vector work) when their kernels differ; None = compute"
    )
    compute_untiled: float | None = Field(
        None, gt=0, le=4, description="CPU prefill of formats without a tiled matmul kernel; None = compute"
    )
    memory: float = Field(gt=0, le=4)
    interconnect: float = Field(ge=0, le=1)
    collective_latency_s: float = Field(ge=0)
    step_overhead_s: float = Field(ge=0)
    power_busy_fraction: float = Field(gt=0, le=1)
    source: Provenance


class Engine(Strict):
    max_batch: int = Field(gt=0)
    max_tokens_per_step: int = Field(gt=0)
    memory_fraction: float = Field(gt=0, le=1)
    source: str


class HardwareFile(Strict):
    schema_: str = Field(alias="schema")
    version: int
    read: str
    hardware: dict[str, Hardware]


class RegionsFile(Strict):
    schema_: str = Field(alias="schema")
    version: int
    read: str
    sources: dict[str, dict[str, object]] = {}
    regions: dict[str, Region]


class ModelsFile(Strict):
    schema_: str = Field(alias="schema")
    version: int
    read: str
    models: dict[str, Model]


class FormatsFile(Strict):
    schema_: str = Field(alias="schema")
    version: int
    read: str
    sources: dict[str, Provenance] = {}
    weights: dict[str, WeightFormat]
    kv: dict[str, KvFormat]


class EfficiencyFile(Strict):
    schema_: str = Field(alias="schema")
    version: int
    read: str
    classes: dict[str, EfficiencyClass]
    hardware: dict[str, EfficiencyClass] = {}  # calibrated for one device (overrides its class)
    engines: dict[str, Engine]


F = TypeVar("F", bound=Strict)


def _read(cls: type[F], path: Path | None, bundled: str) -> F:
    try:
        if path is None:
            text = resources.files("margin.plan").joinpath(f"data/{bundled}").read_text("utf-8")
            where = f"bundled {bundled}"
        else:
            text, where = read_text(path, "catalog"), str(path)
        return cls.model_validate(load_yaml(text, f"catalog {where}"))
    except OSError as exc:
        raise ConfigError(f"cannot read catalog {path}: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"invalid catalog {where}: {validation_message(exc)}") from exc


@dataclass(frozen=True)
class Catalog:
    hardware: dict[str, Hardware]
    regions: dict[str, Region]
    models: dict[str, Model]
    formats: FormatsFile
    efficiency: EfficiencyFile
    versions: dict[str, str]

    @classmethod
    def load(
        cls,
        hardware: Path | None = None,
        regions: Path | None = None,
        models: Path | None = None,
        efficiency: Path | None = None,
    ) -> Catalog:
        hw = _read(HardwareFile, hardware, "hardware.yaml")
        rg = _read(RegionsFile, regions, "regions.yaml")
        md = _read(ModelsFile, models, "models.yaml")
        fm = _read(FormatsFile, None, "formats.yaml")
        ef = _read(EfficiencyFile, efficiency, "efficiency.yaml")
        catalog = cls(
            hw.hardware,
            rg.regions,
            md.models,
            fm,
            ef,
            {
                "hardware": f"{hw.schema_}@{hw.version} read {hw.read}",
                "regions": f"{rg.schema_}@{rg.version} read {rg.read}",
                "models": f"{md.schema_}@{md.version} read {md.read}",
                "formats": f"{fm.schema_}@{fm.version} read {fm.read}",
                "efficiency": f"{ef.schema_}@{ef.version} read {ef.read}",
            },
        )
        catalog.check()
        return catalog

    @classmethod
    def bundled(cls) -> Catalog:
        return cls.load()

    def check(self) -> None:
        """Cross-references: efficiency classes, offered hardware, embedding formats."""
        for key, hw in self.hardware.items():
            if hw.efficiency_class not in self.efficiency.classes:
                raise ConfigError(f"hardware {key}: unknown efficiency_class {hw.efficiency_class!r}")
        for key, region in self.regions.items():
            unknown = [h for h in region.offers if h not in self.hardware]
            if unknown:
                raise ConfigError(f"region {key} offers unknown hardware {unknown}")
        for key in self.efficiency.hardware:
            self.get_hardware(key)
        for key, fmt in self.formats.weights.items():
            if fmt.embedding is not None and fmt.embedding not in self.formats.weights:
                raise ConfigError(f"weight format {key}: unknown embedding format {fmt.embedding!r}")

    def get_hardware(self, key: str) -> Hardware:
        return _pick(self.hardware, key, "hardware")

    def get_region(self, key: str) -> Region:
        return _pick(self.regions, key, "region")

    def get_model(self, key: str) -> Model:
        return _pick(self.models, key, "model")

    def get_weights(self, key: str) -> WeightFormat:
        return _pick(self.formats.weights, key, "weight format")

    def get_kv(self, key: str) -> KvFormat:
        return _pick(self.formats.kv, key, "KV format")

    def get_engine(self, key: str) -> Engine:
        return _pick(self.efficiency.engines, key, "engine")

    def efficiency_for(self, key: str) -> EfficiencyClass:
        """The device's own calibration when the catalog has one, else its class's."""
        if key in self.efficiency.hardware:
            return self.efficiency.hardware[key]
        return self.efficiency.classes[self.get_hardware(key).efficiency_class]


V = TypeVar("V")


def _pick(table: dict[str, V], key: str, what: str) -> V:
    if key not in table:
        raise ConfigError(f"unknown {what} {key!r}; known: {', '.join(sorted(table))}")
    return table[key]
