"""From a job to its schedule and back: the deployments a job may use (its model, or a lowest-carbon /
lowest-cost route's equivalent models, within the key's allowed jurisdictions), the work it represents,
the hourly slots before its deadline priced by the meter itself at each hour's curve values, and the
plan stored with the job (JSON) that the worker follows and `margin batches plan` shows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

import orjson

from margin.batches.schedule import Schedule, Slot, run_now, schedule
from margin.config import ModelConfig, Settings
from margin.economics.meter import Meter
from margin.economics.money import usd_str
from margin.economics.rates import unit_rates

HOUR = timedelta(hours=1)


class Deployment(Protocol):
    """What planning needs of a model's deployment (`margin.types.Target` is one)."""

    @property
    def public(self) -> str: ...
    @property
    def model(self) -> ModelConfig: ...
    @property
    def backend_name(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def jurisdiction(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Placed:
    """A deployment read from the config alone (the CLI plans without starting backends)."""

    public: str
    model: ModelConfig
    backend_name: str
    region: str
    jurisdiction: str | None

    @classmethod
    def all(cls, settings: Settings) -> dict[str, Placed]:
        out = {}
        for name, model in settings.models.items():
            region = settings.backends[model.backend].region
            out[name] = cls(name, model, model.backend, region, settings.region(region).jurisdiction)
        return out


def options_for(
    settings: Settings,
    targets: Mapping[str, Deployment],
    model: str,
    jurisdictions: Sequence[str] | None,
    models: frozenset[str] | None = None,
) -> list[Deployment]:
    """Where a job's lines may run: the model, or a routed name's equivalent models, inside the key's
    jurisdictions and, when its policy lists models, only those it lists (the lines would be refused otherwise)."""
    route = settings.routes.get(model)
    names = route.ladder if route is not None and route.preference is not None else [model]
    if models is not None and route is not None and model not in models:
        return []
    found = [targets[name] for name in names if name in targets]
    if jurisdictions is not None:
        found = [t for t in found if t.jurisdiction in jurisdictions]
    if models is not None:
        found = [t for t in found if t.public in models]
    return found


EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def _embedding(data: dict[str, Any]) -> bool:
    """An embedding line: `input` and only an embedding's fields (a Responses line also has `input`; one with
    nothing else but its model is sized as an embedding: no output assumed)."""
    items = data.get("input")
    if isinstance(items, list) and any(isinstance(item, dict) for item in items):  # Responses items
        return False
    return "input" in data and data.keys() <= EMBEDDING_FIELDS


def line_tokens(body: bytes | str, assumed_output: int) -> int:
    """A line's tokens for sizing: its JSON at ~4 characters a token plus its output limit (or the assumption)."""
    data = orjson.loads(body)
    limit = data.get("max_completion_tokens") or data.get("max_tokens") or data.get("max_output_tokens")
    output = 0 if _embedding(data) else assumed_output
    return max(1, len(body) // 4) + (int(limit) if isinstance(limit, int) and limit > 0 else output)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def used_capacity(plans: Iterable[Mapping[str, Any] | None]) -> dict[tuple[str, str], int]:
    """Tokens other jobs' plans put on each (backend, hour), spread evenly over their windows' hours."""
    used: dict[tuple[str, str], int] = {}
    for plan in plans:
        for window in (plan or {}).get("windows", []):
            start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
            hours = max(1, round((end - start) / HOUR))
            moment = _hour(start)
            while moment < end:
                key = (window["backend"], moment.isoformat())
                used[key] = used.get(key, 0) + window["tokens"] // hours
                moment += HOUR
    return used


@dataclass(frozen=True, slots=True)
class Planner:
    settings: Settings
    meter: Meter

    def slots(
        self, options: Sequence[Deployment], now: datetime, deadline: datetime, used: Mapping[tuple[str, str], int]
    ) -> list[Slot]:
        config = self.settings.batches
        fallback = self.settings.admission.reserve_tokens_per_s
        out: list[Slot] = []
        hour = _hour(now)
        while hour < deadline:
            start, end = max(hour, now), min(hour + HOUR, deadline)
            for rank, target in enumerate(options):
                rates = unit_rates(self.meter, target.public, target.model, hour + HOUR / 2, fallback)
                hardware = self.settings.backends[target.backend_name].hardware
                capacity = None
                if hardware is not None and hardware.tokens_per_s is not None:
                    whole = hardware.tokens_per_s * (end - start).total_seconds() * config.capacity_share
                    capacity = max(0, int(whole) - used.get((target.backend_name, hour.isoformat()), 0))
                out.append(Slot(target.public, rank, start, end, capacity, rates.g_per_token, rates.usd_per_token))
            hour += HOUR
        return out

    def plan(
        self,
        options: Sequence[Deployment],
        work: int,
        now: datetime,
        deadline: datetime,
        used: Mapping[tuple[str, str], int],
        objective: str | None = None,
    ) -> dict[str, Any]:
        objective = objective or self.settings.batches.objective
        slots = self.slots(options, now, deadline, used)
        baseline = run_now(slots, work)
        chosen = baseline if objective == "asap" else schedule(slots, work, "cost" if objective == "cost" else "carbon")
        by_name = {t.public: t for t in options}
        return {
            "objective": objective,
            "planned_at": now.astimezone(UTC).isoformat(),
            "deadline": deadline.astimezone(UTC).isoformat(),
            "tokens": work,
            "windows": [_window(w, by_name[w.option]) for w in chosen.windows],
            "unplaced_tokens": chosen.unplaced,
            "estimate": _totals(chosen),
            "run_now": {**_totals(baseline), "model": options[0].public if options else None},
            "saving": _saving(baseline, chosen),
            "discount": str(self.settings.batches.discount),
        }


def _window(window: Any, target: Deployment) -> dict[str, Any]:
    return {
        "model": window.option,
        "backend": target.backend_name,
        "region": target.region,
        "start": window.start.astimezone(UTC).isoformat(),
        "end": window.end.astimezone(UTC).isoformat(),
        "tokens": window.tokens,
        "co2e_g": None if window.co2e_g is None else round(window.co2e_g, 6),
        "cost_usd": usd_str(window.cost_usd),
    }


def _totals(found: Schedule) -> dict[str, Any]:
    g, usd = found.co2e_g, found.cost_usd
    return {"co2e_g": None if g is None else round(g, 6), "cost_usd": usd_str(usd)}


def _saving(baseline: Schedule, chosen: Schedule) -> dict[str, Any]:
    out: dict[str, Any] = {"co2e_g": None, "co2e_pct": None, "cost_usd": None, "cost_pct": None}
    if baseline.co2e_g is not None and chosen.co2e_g is not None:
        out["co2e_g"] = round(baseline.co2e_g - chosen.co2e_g, 6)
        out["co2e_pct"] = (
            round(100 * (baseline.co2e_g - chosen.co2e_g) / baseline.co2e_g, 2) if baseline.co2e_g else None
        )
    if baseline.cost_usd is not None and chosen.cost_usd is not None:
        out["cost_usd"] = usd_str(baseline.cost_usd - chosen.cost_usd)
        if baseline.cost_usd:
            out["cost_pct"] = round(float(100 * (baseline.cost_usd - chosen.cost_usd) / baseline.cost_usd), 2)
    return out


@dataclass(frozen=True, slots=True)
class Turn:
    """What the worker may do now: run lines on `models` (with their planned tokens), or wait until `wake`."""

    models: list[tuple[str, int]]
    wake: datetime | None


def turn(plan: Mapping[str, Any] | None, model: str, now: datetime) -> Turn:
    """The plan's windows open at `now`. Before the first window: wait for it. After the last one (the work
    was larger than estimated): run at once on the last window's model."""
    windows = (plan or {}).get("windows") or []
    if not windows:
        return Turn([(model, 1)], None)
    spans = [(datetime.fromisoformat(w["start"]), datetime.fromisoformat(w["end"]), w) for w in windows]
    open_now = [(w["model"], max(1, w["tokens"])) for start, end, w in spans if start <= now < end]
    if open_now:
        return Turn(open_now, None)
    later = [start for start, _, _ in spans if start > now]
    if later:
        return Turn([], min(later))
    return Turn([(spans[-1][2]["model"], 1)], None)


def saving_text(plan: Mapping[str, Any]) -> str:
    saving = plan.get("saving") or {}
    parts = []
    if saving.get("co2e_g") is not None:
        parts.append(f"{saving['co2e_g']:.3f} gCO2e ({saving.get('co2e_pct') or 0:.1f} %)")
    if saving.get("cost_usd") is not None:
        parts.append(f"${Decimal(saving['cost_usd']):.6f} ({saving.get('cost_pct') or 0:.1f} %)")
    return ", ".join(parts) or "unknown"
