"""auth: API key → principal (key id, team, tags), plus tags from the x-margin-tags header and `user`.

The key is checked from the headers before the body is read (the API handler calls `authenticate` first
and hands the principal in); a gateway started with no keys runs open (loopback only, decided at start:
see `margin.keys.KeyCache`), and requests are attributed to `anonymous`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from margin.errors import AuthenticationFailed, InvalidRequest
from margin.keys import KeyCache, KeyRecord
from margin.pipeline.base import BaseStage, StageSpec
from margin.pipeline.context import ANONYMOUS, Principal, RequestContext

TAG_VALUE = re.compile(r"^[\w.:@/+-]{1,128}$")


def parse_tag_header(value: str, allowed: set[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in value.split(","):
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
        tags[name] = tag_value
    return tags


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def authenticate(keys: KeyCache, headers: Mapping[str, str]) -> Principal:
    if await keys.open_now():
        return ANONYMOUS
    token = bearer_token(headers)
    if token is None:
        raise AuthenticationFailed("missing API key: send `Authorization: Bearer <key>`", code="missing_api_key")
    return principal_of(await keys.lookup(token))


def principal_of(record: KeyRecord | None) -> Principal:
    if record is None:
        raise AuthenticationFailed("invalid or revoked API key")
    return Principal(
        key_id=record.id,
        name=record.name,
        team=record.team,
        tags=record.tags,
        org=record.org,
        is_admin=record.is_admin,
        policy=record.policy,
    )


class AuthStage(BaseStage):
    name = "auth"

    def __init__(self, keys: KeyCache, header_tag_keys: list[str]) -> None:
        self.keys = keys
        self.allowed = set(header_tag_keys)

    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.principal is None:  # the API handler authenticates before reading the body
            ctx.principal = await authenticate(self.keys, ctx.headers)
        bound = ctx.principal.tags
        header = ctx.headers.get("x-margin-tags")
        allowed = self.allowed | {name for name, value in bound.items() if value == "*"} if bound else self.allowed
        tags = parse_tag_header(header, allowed) if header else {}
        # a key's own tags cannot be overridden by the caller; `name=*` lets the key fill `name` from the header
        tags.update({name: value for name, value in bound.items() if value != "*"} if bound else {})
        ctx.tags = tags


def build(services: Any) -> AuthStage:
    return AuthStage(services.keys, services.settings.tags.header_keys)


STAGE = StageSpec("auth", 100, build)
