"""`cheapest-adequate`: score the prompt with the learned router (P(the cheap model answers adequately)) and
send it to the cheap model when the score clears the route's threshold, else to the strong one.

Scoring embeds the prompt (MiniLM) on a worker thread, so the event loop keeps serving. Routers are loaded
lazily, once per artifact, on first use."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import Any, Protocol

from margin.config import RouteConfig
from margin.routing.prefer import Objective, Option, Preference, preferred_order
from margin.types import Target


class Scorer(Protocol):
    def p_weak_ok(self, prompt: str) -> float: ...

    def threshold_for(self, target: str, value: float) -> float: ...


def load_learned(spec: str) -> Scorer:
    """The learned router (`margin.routing.learned`), imported on first use: it brings numpy and MiniLM."""
    learned = importlib.import_module("margin.routing.learned")
    router: Scorer = learned.LearnedRouter.load(None if spec == "builtin" else spec)
    return router


def routed_text(raw: dict[str, Any]) -> str:
    """What the router reads: the last user turn (or the prompt)."""
    for message in reversed(raw.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    prompt = raw.get("prompt")
    return prompt if isinstance(prompt, str) else ""


class RoutePolicy:
    def __init__(
        self,
        routes: dict[str, RouteConfig],
        loader: Callable[[str], Scorer] = load_learned,
        rates: Callable[[Target], Option] | None = None,
    ) -> None:
        self.routes = routes
        self.loader = loader
        self.rates = rates  # gCO2e and $ per token of a candidate now (lowest-carbon / lowest-cost routes)
        self._scorers: dict[str, Scorer] = {}

    def scorer(self, spec: str) -> Scorer:
        if spec not in self._scorers:
            self._scorers[spec] = self.loader(spec)
        return self._scorers[spec]

    def threshold(self, route: RouteConfig) -> float:
        if route.threshold is not None:
            return route.threshold
        scorer = self.scorer(route.router)
        if route.strong_share is not None:
            return scorer.threshold_for("strong_share", route.strong_share)
        return scorer.threshold_for("quality_floor", route.quality_floor or 0.0)

    async def order(self, name: str, raw: dict[str, Any], candidates: list[Target]) -> tuple[list[Target], float]:
        """The candidates of routed name `name` with the router's choice first, and the prompt's score."""
        route = self.routes[name]
        scorer = self.scorer(route.router)
        score = await asyncio.to_thread(scorer.p_weak_ok, routed_text(raw))
        cheap, strong = route.ladder
        first = cheap if score >= self.threshold(route) else strong
        return sorted(candidates, key=lambda t: t.public != first), score

    def prefer(self, objective: Objective, candidates: list[Target]) -> tuple[list[Target], Preference | None]:
        """Equivalent candidates (already narrowed by flags and residency) ordered by gCO2e or $ per token now;
        the first of the default order is the counterfactual the ledger compares with."""
        if self.rates is None or not candidates:
            return candidates, None
        order = preferred_order([self.rates(t) for t in candidates], objective)
        return [candidates[i] for i in order], Preference(objective, candidates[0])
