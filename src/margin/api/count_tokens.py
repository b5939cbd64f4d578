"""POST /v1/messages/count_tokens: Anthropic's token count of a Messages prompt (the SDKs'
`client.messages.count_tokens`, Claude Code sizing its context), for the models margin serves through an
`anthropic` backend: the body is validated as a Messages prompt (`margin.messages.parse_count`), the caller
authenticated and held to its policy as `/v1/messages` is (the key's models and jurisdictions, the public name
resolved to its model, a `force_model` flag's model counted instead, a `disable` flag refusing it), and the
body is sent to that backend's `/messages/count_tokens` with the upstream's model name; Anthropic's
`{"input_tokens": N}` comes back as it counted it.

Any other model answers 400 (`count_tokens_unavailable`): margin does not estimate a count it cannot make
exactly. A count is not a completion: it writes no ledger row, reserves no budget and is not charged to TPM,
but it is one request for RPM limits (it uses the upstream's request rate too) and is counted in /metrics
(`margin_count_tokens`). The guard does not run on a count, so a caller whose policy redacts or blocks PII is
refused (403) rather than having its prompt sent unscanned."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import Response

from margin.api.errors import anthropic_error_body, error_response, json_response
from margin.api.inference import Arrival, arrive
from margin.api.messages import REQUEST_ID
from margin.backends.anthropic import AnthropicBackend
from margin.errors import InvalidRequest, MarginError, PermissionDenied
from margin.governance.rules import Rules, Subject
from margin.messages import CountTokensRequest, parse_count
from margin.pipeline.steps.admit import admit_rpm
from margin.pipeline.steps.auth import caller
from margin.pipeline.steps.route import disabled, not_allowed, residency, resolve
from margin.protocol import Endpoint
from margin.types import Target

UNAVAILABLE = "count_tokens_unavailable"


async def count_tokens(request: HttpRequest) -> Response:
    arrived = await arrive(request, lambda data: (data, parse_count(data)), anthropic_error_body, x_api_key=True)
    if isinstance(arrived, Response):
        return arrived
    arrival, (data, body) = arrived
    metrics = arrival.services.telemetry.metrics
    target: Target | None = None
    try:
        target = await _target(arrival, body)
        if not isinstance(target.backend, AnthropicBackend):
            raise InvalidRequest(
                f"token counting is not available for the model `{target.public}`: margin counts only models served "
                "by an anthropic backend (Anthropic counts them exactly), and does not estimate",
                param="model",
                code=UNAVAILABLE,
            )
        upstream = target.model.upstream_model or target.public
        tokens = await target.backend.count_input_tokens(data, upstream)
    except MarginError as exc:
        if metrics is not None:
            metrics.count_tokens(target.public if target else None, exc.code)
        response = error_response(exc, arrival.request_id, body_of=anthropic_error_body)
        response.headers[REQUEST_ID] = arrival.request_id
        return response
    if metrics is not None:
        metrics.count_tokens(target.public, "ok")
    headers = {"x-margin-request-id": arrival.request_id, "x-request-id": arrival.request_id}
    return json_response({"input_tokens": tokens}, headers={**headers, REQUEST_ID: arrival.request_id})


def _flagged(rules: Rules, subject: Subject, target: Target, targets: Mapping[str, Target]) -> Target:
    """The model a request for `target` would be served by, as the route step's flags decide: a `force_model`
    flag's model instead; a `disable` flag on it refuses the count as it would refuse the request."""
    flags = rules.flags_for(subject.serving(target.public, target.backend_name))
    forced = next((flag for flag in flags if flag.action == "force_model" and flag.model), None)
    if forced is not None and forced.model:
        target = resolve(targets, forced.model, Endpoint.CHAT)
        flags = rules.flags_for(subject.serving(target.public, target.backend_name))
    if (off := next((flag for flag in flags if flag.action == "disable"), None)) is not None:
        raise disabled(off)
    return target


async def _target(arrival: Arrival, body: CountTokensRequest) -> Target:
    """The model the count is for, as the request path would resolve and allow it (the key's policy: its models,
    its jurisdictions), after one request's room in the caller's RPM limits."""
    services: Any = arrival.services
    governance, principal = services.governance, arrival.principal
    assert principal is not None  # authenticated (count_tokens is no batch endpoint)
    _, subject = caller(principal, arrival.headers.get("x-margin-tags"), set(services.settings.tags.header_keys))
    policy = governance.rules.policy_for(subject, principal.policy)
    if body.model in services.settings.routes:
        raise InvalidRequest(
            f"token counting is not available for the routed name `{body.model}` (the model is chosen per request): "
            "count with a model's own name",
            param="model",
            code=UNAVAILABLE,
        )
    target: Target = resolve(services.targets, body.model, Endpoint.CHAT)
    allowed = policy.allowed_models if policy is not None and policy.models is not None else None
    if allowed is not None and target.public not in allowed:
        raise not_allowed(body.model, allowed)
    if governance.rules.flags:
        target = _flagged(governance.rules, subject, target, services.targets)
        if allowed is not None and target.public not in allowed:  # forced to a model the policy does not list
            raise not_allowed(body.model, allowed, [target.public])
    residency(policy, body.model, [target])
    if policy is not None and policy.pii in ("redact", "block"):  # the guard does not run on a count
        raise PermissionDenied(
            f"token counting is not available to this key: its policy {policy.pii}s PII before a prompt leaves "
            "margin, and a count's prompt would go to the upstream unscanned",
            code=UNAVAILABLE,
        )
    await admit_rpm(governance, arrival.request_id, subject)
    return target
