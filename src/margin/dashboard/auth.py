"""Who may see what on the dashboard.

- An admin key sees everything. A non-admin key sees its own team's rows only (a key without a team: its own
  rows only) and no cross-team table. No key or a bad one: 401 (HTML pages redirect to the login form).
- Open mode (no active keys: the gateway then listens on loopback only) follows `/admin`: everything is shown.
- The key comes from `Authorization: Bearer <key>` or from the login form, which stores it in an HttpOnly,
  SameSite=Strict cookie scoped to `/dashboard`. Every request looks the key up again (revocation applies
  within `server.key_cache_ttl_s`)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from margin.errors import AuthenticationFailed, PermissionDenied
from margin.keys import KeyCache
from margin.pipeline.context import ANONYMOUS, Principal

COOKIE = "margin_dashboard"
COOKIE_PATH = "/dashboard"
COOKIE_MAX_AGE_S = 12 * 3600
MAX_FORM_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Viewer:
    """The principal behind a dashboard request and the rows it may see."""

    principal: Principal
    full: bool  # admin key, or open mode
    team: str | None = None  # rows of this team only (when not full)
    key_id: str | None = None  # rows of this key only (a non-admin key without a team)

    @property
    def label(self) -> str:
        if self.full:
            return "admin" if self.principal.key_id else "open mode (no keys; loopback only)"
        return f"team {self.team}" if self.team else f"key {self.principal.name}"


def _token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(COOKIE) or None


async def principal_for(keys: KeyCache, token: str | None) -> Principal:
    if await keys.active_keys() == 0:
        return ANONYMOUS
    if token is None:
        raise AuthenticationFailed(
            "the dashboard needs an API key: log in at /dashboard/login or send `Authorization: Bearer <key>`",
            code="missing_api_key",
        )
    record = await keys.lookup(token)
    if record is None:
        raise AuthenticationFailed("invalid or revoked API key")
    return Principal(record.id, record.name, record.team, record.tags, record.org, record.is_admin, record.policy)


async def viewer(request: Request) -> Viewer:
    keys: KeyCache = request.app.state.services.keys
    principal = await principal_for(keys, _token(request))
    if principal.is_admin or principal.key_id is None:
        return Viewer(principal, full=True)
    if principal.team is not None:
        return Viewer(principal, full=False, team=principal.team)
    return Viewer(principal, full=False, key_id=principal.key_id)


def require_full(who: Viewer, what: str) -> None:
    if not who.full:
        raise PermissionDenied(f"{what} spans teams; it needs an admin key")


def same_origin(request: Request) -> bool:
    """A login POST must come from a page of this gateway (the Origin header, when a browser sends one)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def form_key(request: Request) -> str:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return ""
    values = parse_qs(body.decode("utf-8", "replace"))
    return (values.get("key") or [""])[0].strip()


def set_login_cookie(response: Response, key: str, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def clear_login_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def safe_next(value: str | None) -> str:
    """Only redirect to dashboard paths after login (no open redirect)."""
    if value and value.startswith("/dashboard") and "//" not in value and "\\" not in value:
        return value
    return "/dashboard"
