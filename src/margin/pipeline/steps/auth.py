"""auth: the caller is known from the headers before the body is read (`margin.keycache.authenticate`, called
by the API handler); this step adds its tags (the x-margin-tags header, limited to `tags.header_keys` and
the key's `name=*` tags, plus the key's own tags, which a caller cannot override), the caller as the rules
see it (only tags bound to the key), and its merged policy."""

from __future__ import annotations

import re
from dataclasses import replace

from margin.errors import InvalidRequest
from margin.governance.rules import Subject, governed_tags
from margin.governance.service import Governance
from margin.guard.pseudonym import UserPseudonyms
from margin.pipeline.values import Next, Reply, Request
from margin.types import Principal

TAG_VALUE = re.compile(r"^[\w.:@/+-]{1,128}$")


def _utf8(value: str) -> str:
    """A header's text: ASGI hands its bytes over as Latin-1, and a client that sent UTF-8 (curl, fetch, httpx
    given bytes) meant UTF-8, so `crêpe` is `crêpe`, not `crÃªpe` (which the value pattern let through: Ã and ª
    are letters). Bytes that are not UTF-8 keep their Latin-1 reading."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def parse_tag_header(value: str, allowed: set[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in _utf8(value).split(","):
        if not item.strip():
            continue
        name, sep, tag_value = item.partition("=")
        name, tag_value = name.strip(), tag_value.strip()
        if not sep or not TAG_VALUE.match(tag_value):
            raise InvalidRequest(
                f"x-margin-tags: {item.strip()!r} must look like key=value "
                "(value: letters, digits, . : @ / + - _, up to 128)",
                param="x-margin-tags",
            )
        if name not in allowed:
            raise InvalidRequest(
                f"x-margin-tags: tag key {name!r} is not allowed (allowed: {sorted(allowed)})", param="x-margin-tags"
            )
        if name in tags:  # a tag has one value: the last one won without a word, and a `name=*` budget counted it
            raise InvalidRequest(
                f"x-margin-tags: tag key {name!r} is given twice (a tag has one value)", param="x-margin-tags"
            )
        tags[name] = tag_value
    return tags


class Auth:
    def __init__(
        self, header_tag_keys: list[str], governance: Governance, pseudonym: UserPseudonyms | None = None
    ) -> None:
        self.allowed = set(header_tag_keys)
        self.governance = governance
        self.pseudonym = pseudonym or UserPseudonyms()  # the ledger's: a per-user counter is rebuilt from its rows

    async def __call__(self, request: Request, next: Next) -> Reply:
        principal = request.principal
        tags, subject = caller(principal, request.headers.get("x-margin-tags"), self.allowed)
        request.record.tags = tags
        rules = self.governance.rules
        user = request.record.user
        if rules.by_user and user is not None:  # only then: a user's pseudonym is a SHA-256 (~1 µs)
            subject = replace(subject, user=user, user_id=self.pseudonym(user))
        policy = rules.policy_for(subject, principal.policy)
        return await next(request._replace(tags=tags, subject=subject, policy=policy))


def caller(principal: Principal, header: str | None, header_keys: set[str]) -> tuple[dict[str, str], Subject]:
    """The request's tags (the header's, limited to `header_keys` and the key's `name=*` tags, then the key's
    own) and the caller as the rules see it (only tags bound to the key). `GET /v1/models` asks it too."""
    bound = principal.tags
    allowed = header_keys | {name for name, value in bound.items() if value == "*"} if bound else header_keys
    tags = parse_tag_header(header, allowed) if header else {}
    if bound:
        # a key's own tags cannot be overridden; `name=*` makes the key fill `name` from the header
        missing = [name for name, value in bound.items() if value == "*" and name not in tags]
        if missing:
            raise InvalidRequest(
                f"this key must name its {', '.join(missing)} in x-margin-tags (e.g. {missing[0]}=…)",
                param="x-margin-tags",
                code="missing_tag",
            )
        tags.update({name: value for name, value in bound.items() if value != "*"})
    keyed = principal.key_id is not None
    return tags, Subject(principal.key_id, principal.team, principal.org, governed_tags(tags, bound, keyed))
