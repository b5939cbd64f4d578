"""Experiments declared in YAML: a suite, a target (a gateway or any OpenAI-compatible endpoint), variants.

```yaml
name: smol-quant
suite: builtin:smol-basics        # or a .jsonl path
limit: 100                        # first N items (optional)
seed: 0                           # recorded; also the `seed` sent with every request unless a variant sets one
concurrency: 1                    # requests in flight per variant (variants run one after another)
warmup: 1                         # unrecorded requests per variant first (page-in, caches)
order: interleaved                # item by item across variants (fair under drifting load) | sequential
baseline: q8_0                    # the variant the others are compared with (default: the first)
target:
  serve_config: margin-quant.yaml # start `margin serve` with this config ("default": the embedded one);
                                  # its ledger lives in the run folder
  # base_url: http://127.0.0.1:8000/v1   # …or use a running gateway / any OpenAI-compatible server
  # api_key_env: MARGIN_KEY
  # ledger: sqlite:///margin.db   # the gateway's ledger, for energy and carbon per request
  # direct: true                  # not margin: cost is unknown unless a variant has `price`
  # cache: false                  # margin's response cache stays out of the way (x-margin-cache: off)
  # post_feedback: true           # grades go to /v1/margin/feedback (margin report --metric cost_per_task)
defaults: {max_tokens: 16, temperature: 0}
variants:
  - {name: f16, model: smollm2-f16, quantization: F16}
  - {name: q8_0, model: smollm2-q8_0, quantization: Q8_0}
matrix:                           # optional: model × template × params, crossed with each other
  models: [{name: q4, model: smollm2-q4_k_m, quantization: Q4_K_M}]
  templates: {plain: "{question}", terse: "{question} Be brief."}
  params: {greedy: {temperature: 0}, warm: {temperature: 0.7, top_p: 0.9}}
judge: {model: gpt-4o-mini}       # for judge-graded items: a model name on the same target
```
"""

from __future__ import annotations

import hashlib
import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from margin.errors import ConfigError
from margin.userfiles import read_yaml, validation_message

MAX_VARIANTS = 200


class Price(BaseModel):
    """$ per 1M tokens, for a direct target that does not report cost."""

    model_config = ConfigDict(extra="forbid")
    input: Decimal
    output: Decimal


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")
    model: str
    backend: str | None = Field(None, description="label: the backend serving `model` (the gateway decides)")
    quantization: str | None = None
    template: str = Field("{question}", description="applied to the item's last user message")
    system: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="sampling params sent with each request")
    price: Price | None = None


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    serve_config: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    ledger: str | None = None
    direct: bool = False
    cache: bool = Field(False, description="let margin's response cache answer (off: every answer is generated)")
    post_feedback: bool = Field(True, description="post each grade to margin's /v1/margin/feedback")
    timeout_s: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _one(self) -> Target:
        if (self.serve_config is None) == (self.base_url is None):
            raise ValueError("target needs exactly one of serve_config or base_url")
        return self


class Matrix(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[Variant]
    templates: dict[str, str] = Field(default_factory=lambda: {"": "{question}"})
    params: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"": dict[str, Any]()})


class JudgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    params: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0, "max_tokens": 512})


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.:@+-]{1,64}$")
    suite: str
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    concurrency: int = Field(1, ge=1, le=256)
    warmup: int = Field(1, ge=0, le=100, description="unrecorded requests per variant before its items")
    order: Literal["interleaved", "sequential"] = Field("interleaved", description="see runner.schedule")
    baseline: str | None = None
    target: Target
    defaults: dict[str, Any] = Field(default_factory=dict)
    variants: list[Variant] = Field(default_factory=list)
    matrix: Matrix | None = None
    judge: JudgeSpec | None = None
    base_dir: str = Field(".", description="set by the loader: relative paths resolve from the YAML's folder")

    def all_variants(self) -> list[Variant]:
        expanded = list(self.variants)
        if self.matrix is not None:
            m = self.matrix
            for model, (tname, template), (pname, params) in itertools.product(
                m.models, m.templates.items(), m.params.items()
            ):
                name = "+".join(part for part in (model.name, tname, pname) if part)
                expanded.append(model.model_copy(update={"name": name, "template": template, "params": params}))
        names = [v.name for v in expanded]
        if not expanded or len(set(names)) != len(names) or len(expanded) > MAX_VARIANTS:
            raise ConfigError(f"an experiment needs 1–{MAX_VARIANTS} variants with unique names, got {names}")
        seeded = {"seed": self.seed, **self.defaults}
        return [v.model_copy(update={"params": {**seeded, **v.params}}) for v in expanded]

    def baseline_name(self) -> str:
        names = [v.name for v in self.all_variants()]
        if self.baseline is None:
            return names[0]
        if self.baseline not in names:
            raise ConfigError(f"baseline {self.baseline!r} is not a variant; variants: {', '.join(names)}")
        return self.baseline

    def resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else Path(self.base_dir) / candidate

    def resolve_suite(self) -> str:
        return self.suite if self.suite.startswith("builtin:") else str(self.resolve(self.suite))

    def digest(self) -> str:
        """What makes two runs comparable (resume refuses a run folder made by a different experiment)."""
        body = self.model_dump(mode="json", exclude={"concurrency", "warmup", "order", "base_dir"})
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def load_experiment(path: Path) -> Experiment:
    data = read_yaml(path, "experiment")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an experiment is a YAML mapping")
    try:
        experiment = Experiment.model_validate({**data, "base_dir": str(path.parent.resolve())})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_message(exc)}") from exc
    experiment.all_variants()
    experiment.baseline_name()
    return experiment


def apply_template(variant: Variant, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The variant's system prompt and template around the item's last user message."""
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") == "user":
            message["content"] = variant.template.replace("{question}", message["content"])
            break
    if variant.system is not None:
        out = [{"role": "system", "content": variant.system}, *[m for m in out if m.get("role") != "system"]]
    return out


def margin_headers(target: Target) -> tuple[tuple[str, str], ...]:
    return () if target.direct or target.cache else (("x-margin-cache", "off"),)
