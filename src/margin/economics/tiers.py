"""OpenAI's processing tiers (`service_tier`): which tiers a backend may be asked for, which tiers a request
may be served at (what its reservation prices), and the tier an answer says served it (what it is charged).

`auto` leaves the tier to the upstream (its project's default, which may be `priority`); `default` is standard
processing. Both are priced at the model's standard rate and need nothing of a backend. `flex` (about half
price) and `priority` (about 1.8×) need an `openai` backend that lists them (`service_tiers`); every other
backend (the local model, the fake, an embedder) serves the standard tier only."""

from __future__ import annotations

import re
from typing import Any

from margin.backend_config import OpenAIBackendConfig

STANDARD = frozenset({"auto", "default"})  # priced at the standard rate, allowed everywhere
PRICED = frozenset({"flex", "priority"})  # priced apart; any other tier an answer names (`scale`…) is unpriced
# what an answer may say served it (`"service_tier": "flex"`): a short lowercase name; anything else is ignored
ANSWERED = re.compile(r"[a-z][a-z0-9_-]{0,15}")


def backend_tiers(backend: Any) -> tuple[str, ...]:
    """The priced tiers (`flex`, `priority`) a backend may be asked for: an `openai` backend's list, else none."""
    return backend.service_tiers if isinstance(backend, OpenAIBackendConfig) else ()


def allows(backend: Any, tier: str | None) -> bool:
    """Whether a request asking for `tier` (None: not asked) may be sent to `backend`."""
    return tier is None or tier in STANDARD or tier in backend_tiers(backend)


def possible(tier: str | None, backend: Any) -> tuple[str | None, ...]:
    """The tiers a request asking for `tier` may be served at on `backend` (its reservation prices the dearest):
    the tier it asked for; when it left the tier to the upstream (`auto`, or none), the standard tier or any the
    backend allows, since the upstream project's default tier may be one of them."""
    if tier is not None and tier != "auto":
        return (tier,)
    return (tier, *backend_tiers(backend))


def answered(payload: Any) -> str | None:
    """The tier an answer (or a stream event) says served it (OpenAI's `service_tier`), if it says one."""
    value = payload.get("service_tier") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and ANSWERED.fullmatch(value) else None


def priced(tier: str | None, backend: Any) -> str | None:
    """The tier a charge for a request served at `tier` is priced at. On a backend that lists tiers, that tier
    (one with no price for the model is unpriced: `scale`…). A backend that lists none is not asked for a tier,
    and its provider may name its own in every answer (Groq's `on_demand`): flex and priority are priced as
    such (an OpenAI project whose default tier is priority), any other name at the standard rate, as before
    tiers were read at all."""
    if tier is None or tier in PRICED or backend_tiers(backend):
        return tier
    return None


def served(answer: str | None, requested: str | None) -> str | None:
    """The tier a request is recorded and charged at: what the upstream said, else what was asked for."""
    return answer if answer is not None else requested
