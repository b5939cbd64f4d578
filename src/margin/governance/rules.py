"""The rules in force: budgets, rate limits, flags and policies, from the config file merged with those set
through the admin API or CLI (stored in the `gov_rules` table; a stored rule replaces a config rule of the
same name). A `Rules` object is an immutable snapshot: reloading swaps the whole object, so a request in
flight keeps the rules it was admitted under."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ValidationError

from margin.config import Settings, unknown_models_message
from margin.errors import Conflict, InvalidRequest, NotFound
from margin.ledger import audit
from margin.ledger.models import gov_rules
from margin.specs import EACH, LEVELS, BudgetSpec, FlagSpec, LimitSpec, PoliciesConfig, Policy, Scope

RuleKind = Literal["budget", "limit", "flag"]
SPEC_TYPES: dict[str, type[BaseModel]] = {"budget": BudgetSpec, "limit": LimitSpec, "flag": FlagSpec}
MAX_RULE_NAME = 160  # gov_rules.name: String(160)


@dataclass(frozen=True, slots=True)
class Subject:
    """What a request (or a ledger row) is, for matching scopes."""

    key_id: str | None = None
    team: str | None = None
    org: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    backend: str | None = None
    user: str | None = None  # the OpenAI `user` field, set only while a rule has a user scope (`Rules.by_user`)
    user_id: str | None = None  # its pseudonym, as the ledger's `user` column holds it (margin.guard.pseudonym)

    def serving(self, model: str, backend: str) -> Subject:
        """The same caller on one candidate model and backend (for model- and backend-scoped rules)."""
        return Subject(self.key_id, self.team, self.org, self.tags, model, backend, self.user, self.user_id)


class Part(NamedTuple):
    """Which of a rule's counters (and rate-limit buckets) a request charges: per org for a team, tag or user
    scope naming no org, per value for `user=*` or `tag=<key>=*` (the user's pseudonym, the tag's value),
    both for both. `Part()`: the rule's one shared counter (or, per org, that of callers in no org)."""

    org: str | None = None
    value: str | None = None

    def suffix(self) -> str:
        """What a counter's or bucket's name adds for this part: `#org` (as before), and `|` + a digest of the
        value (a tag value or pseudonym is never put in a name as sent: a fixed-size hex digest)."""
        org = "" if self.org is None else f"#{self.org}"
        return org if self.value is None else f"{org}|{value_digest(self.value)}"


SHARED = Part()


@functools.lru_cache(maxsize=4096)
def value_digest(value: str) -> str:
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def matches(scope: Scope, subject: Subject) -> bool:
    kind, value = scope.kind, scope.value
    if kind == "global":
        return True
    if scope.org is not None and subject.org != scope.org:
        return False
    if kind == "tag":
        name, _, tag_value = (value or "").partition("=")
        if tag_value == EACH:
            return name in subject.tags
        return subject.tags.get(name) == tag_value
    if kind == "user":
        return subject.user is not None and value in (EACH, subject.user)
    actual = {
        "key": subject.key_id,
        "team": subject.team,
        "org": subject.org,
        "model": subject.model,
        "backend": subject.backend,
    }[kind]
    return actual is not None and actual == value


def partition(scope: Scope, subject: Subject) -> Part:
    """The one owner of "which of the rule's counters does this request charge" (budgets, rate limits, their
    rebuild from the ledger, the admin listing): see `Part`. A per-value part's value is the user's pseudonym
    (`user` scopes, also `user=alice`: the ledger's column, bounded and hex) or the tag's value. On the request
    path for every rule: a set lookup for the scopes that have one counter."""
    kind = scope.kind
    if kind in SHARED_KINDS:
        return SHARED
    org = subject.org if scope.org is None else None  # team, tag and user scopes naming no org: per org
    if kind == "team":
        return Part(org)
    if kind == "user":
        return Part(org, subject.user_id)
    name, _, value = (scope.value or "").partition("=")
    return Part(org, subject.tags.get(name)) if value == EACH else Part(org)


SHARED_KINDS = frozenset({"global", "org", "key", "model", "backend"})


def governed_tags(tags: Mapping[str, str], bound: Mapping[str, str], keyed: bool) -> Mapping[str, str]:
    """The tags rules (budgets, limits, flags, policies) may match. With keys, only the tags bound to the
    caller's key: a fixed value (`customer=acme`) or a name the key fills from the x-margin-tags header
    (`customer=*`). Other header tags only label the ledger row for reports, so a caller can neither leave a
    tag budget by omitting a header nor spend someone else's by adding one. Open mode (no keys, loopback
    only): the header's tags."""
    if not keyed or not tags:
        return tags
    return {name: value for name, value in tags.items() if name in bound}


def rule_name(kind: str, spec: BaseModel) -> str:
    if isinstance(spec, LimitSpec):
        return spec.scope.label()
    assert isinstance(spec, BudgetSpec | FlagSpec)
    return spec.name


def parse_spec(kind: str, data: Any) -> BaseModel:
    """A rule being created or replaced (CLI, admin API): stricter than loading one (`build_rules`), e.g. a
    flag with an argument its action does not use is refused here but still loads from the database."""
    if kind not in SPEC_TYPES:
        raise NotFound(f"no rule kind {kind!r} (budget, limit or flag)")
    try:
        return SPEC_TYPES[kind].model_validate(data, strict=True, context={"new": True})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or kind
        message = str(first["msg"]).removeprefix("Value error, ")  # pydantic's prefix on a validator's own
        raise InvalidRequest(f"invalid {kind}: {where}: {message}", param=where) from exc


def parse_policy(text: str | None) -> dict[str, Any] | None:
    """A key's policy given as JSON (CLI) → validated dict (stored on the key)."""
    if not text:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"policy is not valid JSON: {exc}") from exc
    return policy_dict(data)


def policy_dict(data: Any) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        return Policy.model_validate(data, strict=True).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("policy", *first["loc"]))
        raise InvalidRequest(f"invalid {where}: {first['msg']}", param=where) from exc


def check_policy_models(policy: Mapping[str, Any] | None, settings: Settings) -> None:
    """A key's policy names only models and routes this gateway has (400 / exit 2): a typo would otherwise let
    the key use nothing, or, were unknown names ignored, everything."""
    unknown = settings.unknown_models((policy or {}).get("models") or ())
    if unknown:
        raise InvalidRequest(f"policy.models: {unknown_models_message(unknown, settings)}", param="policy.models")


def merge_policies(layers: Iterable[Policy]) -> Policy:
    """Layers from least to most specific. Jurisdictions and models intersect, levels take the strictest, so no
    layer can loosen another; other fields take the most specific value set."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for name, value in layer.model_dump(exclude_none=True).items():
            if name not in merged:
                merged[name] = value
            elif name in ("jurisdictions", "models"):
                merged[name] = [j for j in merged[name] if j in value]
            elif name in ("pii", "pii_output", "injection"):
                merged[name] = max(merged[name], value, key=LEVELS.index)
            elif name == "log_prompts":
                merged[name] = merged[name] and value  # any layer may turn prompt logging off
            else:
                merged[name] = value
    return Policy.model_validate(merged)


@dataclass(frozen=True, slots=True)
class Rules:
    budgets: tuple[BudgetSpec, ...] = ()
    limits: tuple[LimitSpec, ...] = ()
    flags: tuple[FlagSpec, ...] = ()
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    stored: frozenset[tuple[str, str]] = frozenset()  # (kind, name) of rules from the database
    _policies: dict[Any, Policy] = field(default_factory=dict, compare=False, repr=False)  # merged, per caller
    # a budget or limit has a user scope: requests then carry their `user` (and its pseudonym) to match
    by_user: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        scopes = [budget.scope for budget in self.budgets] + [limit.scope for limit in self.limits]
        object.__setattr__(self, "by_user", any(scope.kind == "user" for scope in scopes))

    def budgets_for(self, subject: Subject) -> list[BudgetSpec]:
        return [b for b in self.budgets if matches(b.scope, subject)]

    def limits_for(self, subject: Subject) -> list[LimitSpec]:
        return [limit for limit in self.limits if matches(limit.scope, subject)]

    def flags_for(self, subject: Subject) -> list[FlagSpec]:
        return [f for f in self.flags if f.enabled and matches(f.target, subject)]

    def policy_for(self, subject: Subject, key_policy: Mapping[str, Any] | None) -> Policy:
        """The caller's merged policy, memoized per (org, team, tags, key policy) for this snapshot."""
        memo = (subject.org, subject.team, tuple(sorted(subject.tags.items())), orjson.dumps(key_policy or {}))
        cached = self._policies.get(memo)
        if cached is None:
            if len(self._policies) > 10_000:
                self._policies.clear()
            cached = self._policies[memo] = self._merge_policy(subject, key_policy)
        return cached

    def _merge_policy(self, subject: Subject, key_policy: Mapping[str, Any] | None) -> Policy:
        config = self.policies
        layers = [config.default]
        if subject.org and subject.org in config.orgs:
            layers.append(config.orgs[subject.org])
        if subject.team and subject.team in config.teams:
            layers.append(config.teams[subject.team])
        layers += [policy for tag, policy in sorted(config.tags.items()) if _tag_in(tag, subject.tags)]
        if key_policy:
            layers.append(Policy.model_validate(dict(key_policy)))
        return merge_policies(layers)

    def listing(self, kind: RuleKind) -> list[dict[str, Any]]:
        specs: tuple[BaseModel, ...] = {"budget": self.budgets, "limit": self.limits, "flag": self.flags}[kind]
        return [
            {
                **spec.model_dump(mode="json"),
                "source": "admin" if (kind, rule_name(kind, spec)) in self.stored else "config",
            }
            for spec in specs
        ]


def _tag_in(tag: str, tags: Mapping[str, str]) -> bool:
    name, _, value = tag.partition("=")
    return tags.get(name) == value


def _merge(config: Iterable[BaseModel], stored: dict[str, BaseModel], kind: str) -> tuple[Any, ...]:
    merged = {rule_name(kind, spec): spec for spec in config}
    merged.update(stored)
    return tuple(merged.values())


def build_rules(settings: Settings, rows: Iterable[Any]) -> Rules:
    stored: dict[str, dict[str, BaseModel]] = {"budget": {}, "limit": {}, "flag": {}}
    for row in rows:
        if row.kind in stored:
            stored[row.kind][row.name] = SPEC_TYPES[row.kind].model_validate(row.spec, context={"stored": True})
    return Rules(
        budgets=_merge(settings.budgets, stored["budget"], "budget"),
        limits=_merge(settings.limits, stored["limit"], "limit"),
        flags=_merge(settings.flags, stored["flag"], "flag"),
        policies=settings.policies,
        stored=frozenset((kind, name) for kind, specs in stored.items() for name in specs),
    )


async def load_rules(settings: Settings, engine: Any) -> Rules:
    """Read stored rules with the async engine and merge them with the config file's."""
    async with engine.connect() as connection:
        rows = (await connection.execute(sa.select(gov_rules))).all()
    return build_rules(settings, rows)


def save_rule(
    engine: sa.Engine, kind: str, data: Any, origin: audit.Origin | None = None, settings: Settings | None = None
) -> BaseModel:
    """Create or replace a rule (sync engine: CLI and the admin API's worker thread), recorded in the audit log
    in the same transaction with its body before (None: a new rule) and after. With `settings`, a `force_model`
    flag must name a model of that config (a typo would answer every request it covers with a 404)."""
    spec = parse_spec(kind, data)
    if settings is not None and isinstance(spec, FlagSpec) and spec.action == "force_model" and spec.model:
        unserved = settings.unserved_model_message(spec.model)
        if unserved:
            raise InvalidRequest(f"invalid flag: model: {unserved}", param="model")
    name = rule_name(kind, spec)
    if len(name) > MAX_RULE_NAME:  # a limit is named by its scope: PostgreSQL refused it (a 500)
        message = f"invalid {kind}: its name (or scope) {name[:40]!r}… is over {MAX_RULE_NAME} characters"
        raise InvalidRequest(message, param="scope")
    body = spec.model_dump(mode="json")
    values = {"spec": body, "updated_at": datetime.now(UTC)}
    this = sa.and_(gov_rules.c.kind == kind, gov_rules.c.name == name)
    with engine.begin() as connection:
        before = None
        if origin is not None:
            audit.hold(connection)  # the body before is the one this replaces
            before = connection.execute(sa.select(gov_rules.c.spec).where(this)).scalar()
        updated = connection.execute(gov_rules.update().where(this).values(**values))
        if updated.rowcount == 0:
            connection.execute(gov_rules.insert().values(kind=kind, name=name, **values))
        if origin is not None:
            audit.record(connection, origin, audit.Change(f"{kind}.put", name, before=before, after=body))
    return spec


def delete_rule(
    engine: sa.Engine, settings: Settings, kind: str, name: str, origin: audit.Origin | None = None
) -> None:
    """Delete a stored rule, recorded in the audit log in the same transaction with its body before."""
    this = sa.and_(gov_rules.c.kind == kind, gov_rules.c.name == name)
    with engine.begin() as connection:
        if origin is not None:
            audit.hold(connection)
        before = connection.execute(sa.select(gov_rules.c.spec).where(this)).scalar()
        deleted = connection.execute(gov_rules.delete().where(this))
        if deleted.rowcount and origin is not None:
            audit.record(connection, origin, audit.Change(f"{kind}.delete", name, before=before))
    if deleted.rowcount:
        return
    configured: dict[str, list[Any]] = {
        "budget": list(settings.budgets),
        "limit": list(settings.limits),
        "flag": list(settings.flags),
    }
    in_config = {rule_name(kind, spec) for spec in configured.get(kind, [])}
    if name in in_config:
        raise Conflict(f"{kind} {name!r} is defined in the config file; change it there (or override it)")
    raise NotFound(f"no stored {kind} named {name!r}")
