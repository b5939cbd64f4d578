"""route: where the request may go, decided once (`RouteDecision`).

The requested name (a public id, an alias, or a routed name from `routes:`) → its candidates: the model
(or, for a routed name, the router's choice first) and its fallbacks. Flags apply to every candidate (the
primary's `disable` refuses the request, `force_model` sends it elsewhere, another candidate that is
disabled is dropped, every candidate's `cap_max_tokens` caps the request, `require_cache` allows only a
cached answer); the caller's jurisdictions filter the candidates. When budgets or limits apply, the
reservation's basis is counted here too: the prompt's estimated tokens (for TPM and a limit on the
output), the most input it can be billed for, the most output it may produce (a limit is set when it sent
none, so what is reserved is also what is enforced), the busy time a candidate priced by busy time may use
under a hard USD budget (its call is cut there: the same promise, for time), and that priced at the dearest
priced candidate. The call step walks the candidates in this order; nothing re-decides."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import NamedTuple

import orjson

from margin.backend_config import BackendConfig, OpenAIBackendConfig
from margin.backends.payloads import non_text_parts, request_text, token_id_count
from margin.config import RouteConfig
from margin.economics import tiers
from margin.economics.meter import Meter
from margin.errors import FeatureDisabled, InvalidRequest, ModelNotAllowed, ModelNotFound, ResidencyExcluded
from margin.governance import admission as adm
from margin.governance.rules import Rules, Subject
from margin.governance.service import Governance
from margin.pipeline.ceiling import input_bound, prediction_bound
from margin.pipeline.values import NO_ALLOWANCE, Next, Reply, Request, RouteDecision
from margin.protocol import ChatCompletionRequest, CompactRequest, Endpoint, service_tier
from margin.routing.policy import RoutePolicy
from margin.specs import AdmissionConfig, BudgetSpec, FlagSpec, Policy
from margin.types import Target

CHAT_MESSAGE_OVERHEAD = 8  # template tokens per message, on top of the counted text (upper bound)
NON_TEXT_PART_TOKENS = 2048  # an image or audio part, priced as a large high-detail image (upper bound)
OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens")
TOKENIZE_INLINE_CHARS = 16_384  # a longer prompt is tokenized in a worker thread (1 MiB: ~0.5 s with SmolLM2's)


class Basis(NamedTuple):
    """What a budget reservation is priced on (`RouteDecision`'s fields of the same names)."""

    prompt_tokens: int = 0
    prompt_bound: int = 0
    output_tokens: int = 0
    predicted: int = 0
    worst_usd: Decimal | None = None
    unpriced: tuple[str, ...] = ()
    budgets: tuple[BudgetSpec, ...] = ()
    busy_allowance: Mapping[str, float] = NO_ALLOWANCE


def not_allowed(requested: str, allowed: frozenset[str], served_by: list[str] | None = None) -> ModelNotAllowed:
    """403 before anything is reserved or sent (with a ledger row, as every refusal after authentication)."""
    listed = ", ".join(f"`{name}`" for name in sorted(allowed)[:20]) + (", …" if len(allowed) > 20 else "")
    why = f" (it would be served by {', '.join(f'`{n}`' for n in served_by)})" if served_by else ""
    return ModelNotAllowed(
        f"this API key may not use the model `{requested}`{why}; its policy allows: {listed or 'no model'}",
        param="model",
    )


def resolve(targets: Mapping[str, Target], model: str, endpoint: Endpoint) -> Target:
    target = targets.get(model)
    if target is None:
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    wants_embedding = endpoint is Endpoint.EMBEDDINGS
    if wants_embedding != (target.model.kind == "embedding"):
        kind = "an embedding" if target.model.kind == "embedding" else "a text generation"
        raise InvalidRequest(
            f"model `{target.public}` is {kind} model; it cannot serve /v1/{endpoint.replace('.', '/')}",
            param="model",
            code="wrong_model_kind",
        )
    return target


def residency(policy: Policy | None, requested: str, chain: list[Target]) -> tuple[tuple[Target, ...], bool]:
    """The candidates inside the caller's jurisdictions (its `policy`'s), and whether some were dropped."""
    allowed = policy.jurisdictions if policy is not None else None
    if allowed is None:
        return tuple(chain), False
    kept = tuple(t for t in chain if t.jurisdiction in allowed)
    if not kept:
        where = ", ".join(f"{t.public}@{t.region} ({t.jurisdiction or 'no jurisdiction'})" for t in chain)
        raise ResidencyExcluded(f"`{requested}` is only served outside the allowed jurisdictions {allowed}: {where}")
    return kept, len(kept) < len(chain)


def disabled(flag: FlagSpec) -> FeatureDisabled:
    """403: a `disable` flag applies to the model asked for."""
    reason = f": {flag.reason}" if flag.reason else ""
    return FeatureDisabled(f"disabled by flag `{flag.name}` ({flag.target.label()}){reason}")


def capped(request: Request, cap: int) -> Request:
    """Every output-limit field the client sent lowered to `cap` (an upstream may honour either one); with
    none sent, `max_tokens` set."""
    body = request.body
    if isinstance(body, CompactRequest):  # a compaction takes no output limit (the upstream sizes its summary)
        return request
    fields = OUTPUT_FIELDS if isinstance(body, ChatCompletionRequest) else OUTPUT_FIELDS[:1]
    sent = {name: getattr(body, name) for name in fields if getattr(body, name) is not None}
    update = {name: cap for name, value in sent.items() if value > cap}
    if not sent:
        update["max_tokens"] = cap
    if not update:
        return request
    return request._replace(body=body.model_copy(update=update), raw={**request.raw, **update})


class Route:
    def __init__(
        self,
        targets: Mapping[str, Target],
        routes: Mapping[str, RouteConfig],
        governance: Governance,
        meter: Meter,
        policy: RoutePolicy | None = None,
    ) -> None:
        self.targets = targets
        self.routes = routes
        self.gov = governance
        self.meter = meter
        self.policy = policy

    async def __call__(self, request: Request, next: Next) -> Reply:
        rules, subject = self.gov.rules, request.subject
        requested = request.body.model
        route = self.routes.get(requested)
        ladder = [resolve(self.targets, name, request.endpoint) for name in route.ladder] if route else []
        primary = ladder[-1] if ladder else resolve(self.targets, requested, request.endpoint)
        policy = request.policy  # `models` first: a plain field; `allowed_models` (a private attribute) costs ~4 us
        allowed = policy.allowed_models if policy is not None and policy.models is not None else None
        if allowed is not None and (requested if route is not None else primary.public) not in allowed:
            raise not_allowed(requested, allowed)
        if rules.flags:
            forced = self._forced(request, rules, subject, primary)
            if forced is not primary:  # a flag sent the request to another model: no routing
                primary, ladder, route = forced, [], None
        chain = ladder or [primary, *(self.targets[name] for name in primary.model.fallbacks if name != primary.public)]
        cache_only = None
        if rules.flags:
            request, chain, cache_only = self._flagged(request, rules, subject, primary, chain)
        if allowed is not None:
            chain = self._allowed(requested, chain, allowed)
        candidates, filtered = self._residency(request, requested, chain)
        candidates = self._honouring(request, candidates, routed=route is not None)
        score, strongest, preference = None, None, None
        if route is not None and self.policy is not None:
            if route.preference is not None:  # lowest-carbon / lowest-cost among equivalent deployments
                ordered, preference = self.policy.prefer(route.preference, list(candidates))
            else:  # cheapest-adequate: the router's choice first
                ordered, score = await self.policy.order(requested, request.raw, list(candidates))
                strongest = self.targets.get(route.ladder[-1])
            candidates = tuple(ordered)
            request.record.route, request.record.router_score = requested, score
            request.record.preference = preference
        request, basis = await self._basis(request, rules, subject, candidates)
        jurisdictions = policy.jurisdictions if policy is not None else None
        decision = RouteDecision(  # positional: `Basis` is `RouteDecision`'s tail, field for field (no dict)
            candidates,
            requested,
            requested if route is not None and self.policy is not None else None,
            score,
            strongest,
            tuple(jurisdictions) if jurisdictions is not None else None,
            filtered,
            cache_only,
            *basis,
        )
        return await next(request._replace(decision=decision))

    async def _basis(
        self, request: Request, rules: Rules, subject: Subject, candidates: tuple[Target, ...]
    ) -> tuple[Request, Basis]:
        """The reservation's basis when budgets or limits apply: the prompt's estimated tokens; with budgets,
        the most input and output, the busy time allowed each candidate priced by it under a hard USD budget,
        and that priced at the dearest priced candidate. The request may get `max_tokens` set."""
        if not (rules.budgets or rules.limits):
            return request, Basis()
        prompt = await self._prompt_tokens(request, candidates[0])
        budgets, hard = self._budgets(rules, subject, candidates) if rules.budgets else ((), frozenset[str]())
        if not budgets:
            return request, Basis(prompt)
        config: AdmissionConfig = self.gov.settings.admission
        request, output = self._output_tokens(request, candidates[0], prompt, config)
        predicted = self._predicted(request, candidates)
        output += predicted
        bound = input_bound(request, prompt, candidates, hard=any(b.mode == "hard" for b in budgets))
        allowance = self._allowance(candidates, hard, bound + output, config)
        tier = service_tier(request.body)
        worst, unpriced = adm.worst_case_usd(self.meter, candidates, bound, output, config, allowance, tier)
        if request.record.batch is not None:  # a batch line settles its discounted cost (economics.meter.discounted)
            worst -= worst * request.record.batch.discount
        return request, Basis(prompt, bound, output, predicted, worst, unpriced, budgets, allowance)

    def _predicted(self, request: Request, candidates: tuple[Target, ...]) -> int:
        """The output tokens a Predicted Output may add (`ceiling.prediction_bound`), where a candidate is sent
        it: an `openai` backend. Every other backend ignores it (the answer is the same without one)."""
        body = request.body
        if not isinstance(body, ChatCompletionRequest) or body.prediction is None:
            return 0
        backends = self.meter.settings.backends
        if not any(isinstance(backends[t.backend_name], OpenAIBackendConfig) for t in candidates):
            return 0
        return prediction_bound(request)

    def _allowance(
        self, candidates: tuple[Target, ...], hard: frozenset[str], tokens: int, config: AdmissionConfig
    ) -> Mapping[str, float]:
        """The busy seconds each candidate under a hard USD budget (`hard`: their public names) may use when its
        backend is priced by busy time (`hardware`); others have none (their usage is held at the tokens)."""
        backends = self.meter.settings.backends
        found = {
            target.public: adm.busy_allowance_s(backends[target.backend_name], tokens, config)
            for target in candidates
            if target.public in hard and backends[target.backend_name].hardware is not None
        }
        return MappingProxyType(found) if found else NO_ALLOWANCE

    def _forced(self, request: Request, rules: Rules, subject: Subject, target: Target) -> Target:
        """A `force_model` flag on the model asked for sends the request to another model."""
        flags = rules.flags_for(subject.serving(target.public, target.backend_name))
        forced = next((f for f in flags if f.action == "force_model"), None)
        if forced is None or not forced.model:
            return target
        request.record.notices["x-margin-flag"] = forced.name
        return resolve(self.targets, forced.model, request.endpoint)

    def _flagged(
        self, request: Request, rules: Rules, subject: Subject, primary: Target, chain: list[Target]
    ) -> tuple[Request, list[Target], str | None]:
        """Flags of every candidate: the primary's apply to the request (disable → 403); another candidate that
        is disabled (or cache-only) is dropped; every candidate's `cap_max_tokens` caps the request."""
        kept, cache_only = [], None
        for candidate in chain:
            flags = rules.flags_for(subject.serving(candidate.public, candidate.backend_name))
            if candidate is primary:
                for flag in flags:
                    request, cache_only = self._apply(request, flag, cache_only)
            elif any(f.action in ("disable", "require_cache") for f in flags):
                continue
            else:
                for flag in flags:
                    if flag.action == "cap_max_tokens" and flag.max_tokens:
                        request = capped(request, flag.max_tokens)
            kept.append(candidate)
        return request, kept, cache_only

    @staticmethod
    def _apply(request: Request, flag: FlagSpec, cache_only: str | None) -> tuple[Request, str | None]:
        if flag.action == "disable":
            raise disabled(flag)
        if flag.action == "cap_max_tokens" and flag.max_tokens:
            request = capped(request, flag.max_tokens)
        if flag.action == "require_cache":
            cache_only = flag.name
        return request, cache_only

    def _honouring(self, request: Request, candidates: tuple[Target, ...], routed: bool) -> tuple[Target, ...]:
        """The candidates whose backend can do what the request asks of it: its `service_tier` (`flex`,
        `priority`: an `openai` backend that lists it) and its `verbosity` (`low`, `high`: an `openai` backend;
        `medium` is what every model does). The model asked for (or, for a routed name, every candidate) not
        allowing it is a 400 before anything is reserved or sent: never served at another tier's price, nor
        answered at a verbosity it did not ask for. A fallback that does not allow it is dropped."""
        body = request.body
        if request.endpoint is Endpoint.COMPACT:
            candidates = self._allowing(
                candidates,
                routed,
                lambda backend: isinstance(backend, OpenAIBackendConfig) and backend.compacts,
                (
                    "`/v1/responses/compact`",
                    "compaction: only an `openai` backend with `responses_compact` on, an upstream that serves "
                    "OpenAI's Responses API, is sent it",
                    "compact with a model served by such a backend",
                ),
                "model",
            )
        tier = service_tier(body)
        if tier is not None and tier not in tiers.STANDARD:
            if request.endpoint is not Endpoint.CHAT:
                raise InvalidRequest(
                    f"service_tier `{tier}` is only supported on /v1/chat/completions",
                    param="service_tier",
                    code="unsupported_value",
                )
            candidates = self._allowing(
                candidates,
                routed,
                lambda backend: tiers.allows(backend, tier),
                (f"service_tier `{tier}`", "that tier", "send `auto` or `default`, or leave it out"),
                "service_tier",
            )
        if isinstance(body, ChatCompletionRequest) and body.verbosity is not None and body.verbosity != "medium":
            candidates = self._allowing(
                candidates,
                routed,
                lambda backend: isinstance(backend, OpenAIBackendConfig),
                (
                    f"verbosity `{body.verbosity}`",
                    "it: only `openai` backends are sent `verbosity`",
                    "send `medium`, or leave it out",
                ),
                "verbosity",
            )
        return candidates

    def _allowing(
        self,
        candidates: tuple[Target, ...],
        routed: bool,
        allows: Callable[[BackendConfig], bool],
        words: tuple[str, str, str],
        param: str,
    ) -> tuple[Target, ...]:
        """The candidates whose backend `allows` what the request asks; a 400 naming `param` when the first
        candidate's does not (or, for a routed name, none does). `words`: what was asked, what the backend does
        not allow, what to send instead."""
        what, why, instead = words
        backends = self.meter.settings.backends
        kept = tuple(t for t in candidates if allows(backends[t.backend_name]))
        if not kept or (not routed and kept[0] is not candidates[0]):
            refused = ", ".join(f"`{t.public}`" for t in (candidates[:1] if kept else candidates))
            raise InvalidRequest(
                f"{what} is not available for {refused} through this gateway (its backend does not allow {why}); "
                f"{instead}",
                param=param,
                code="unsupported_value",
            )
        return kept

    @staticmethod
    def _allowed(requested: str, chain: list[Target], allowed: frozenset[str]) -> list[Target]:
        """The candidates the caller's policy lists: a fallback (or a routed name's model, or a flag's
        `force_model`) it does not list is dropped; none left is the same refusal as a model not listed."""
        kept = [target for target in chain if target.public in allowed]
        if not kept:
            raise not_allowed(requested, allowed, [target.public for target in chain])
        return kept

    @staticmethod
    def _residency(request: Request, requested: str, chain: list[Target]) -> tuple[tuple[Target, ...], bool]:
        return residency(request.policy, requested, chain)

    @staticmethod
    def _budgets(
        rules: Rules, subject: Subject, candidates: tuple[Target, ...]
    ) -> tuple[tuple[BudgetSpec, ...], frozenset[str]]:
        """The budgets of every candidate (a model budget on a fallback is reserved too), and the candidates a
        hard USD budget applies to."""
        found: dict[str, BudgetSpec] = {}
        hard: set[str] = set()
        for candidate in candidates:
            for budget in rules.budgets_for(subject.serving(candidate.public, candidate.backend_name)):
                found.setdefault(budget.name, budget)
                if budget.mode == "hard" and budget.usd is not None:
                    hard.add(candidate.public)
        return tuple(found.values()), frozenset(hard)

    @staticmethod
    async def _prompt_tokens(request: Request, target: Target) -> int:
        """An upper bound of the input tokens: counted text, token ids as they are, template overhead per
        message, non-text parts and tool definitions. A long text is counted off the event loop."""
        body = request.body
        text = request_text(body)
        count = target.backend.count_tokens
        counted = count(text) if len(text) <= TOKENIZE_INLINE_CHARS else await asyncio.to_thread(count, text)
        tokens = counted if counted is not None else adm.conservative_tokens(text)
        if not isinstance(body, ChatCompletionRequest):
            return tokens + token_id_count(body)
        tokens += CHAT_MESSAGE_OVERHEAD * len(body.messages) + NON_TEXT_PART_TOKENS * non_text_parts(body)
        if body.tools:
            tokens += adm.conservative_tokens(orjson.dumps(body.tools).decode())
        return tokens

    @staticmethod
    def _output_tokens(request: Request, target: Target, prompt: int, config: AdmissionConfig) -> tuple[Request, int]:
        """The most output: its limit (set when it sent none) × answers per prompt (`n`, `best_of`) × prompts."""
        if request.endpoint is Endpoint.EMBEDDINGS:
            return request, 0
        requested = getattr(request.body, "output_limit", None)
        each = adm.output_allowance(requested, target.model.context_length, prompt, config.default_max_output_tokens)
        if requested is None:
            request = capped(request, max(each, 1))
        body = request.body
        return request, each * getattr(body, "choices", 1) * getattr(body, "prompts", 1)
