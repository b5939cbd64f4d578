"""Who may see what on the dashboard.

- An admin key sees everything. A non-admin key sees its own team's rows only (a key without a team: its own
  rows only) and no cross-team table. No key or a bad one: 401 (HTML pages redirect to the login form).
- Open mode (no active keys: the gateway then listens on loopback only) follows `/admin`: everything is shown.
- The key comes from `Authorization: Bearer <key>`, or the login form checks it once and sets an HttpOnly,
  SameSite=Strict cookie scoped to `/dashboard` that holds a signed session (key id, expiry, HMAC), never the
  key. Every request looks the key up again by id (a revocation applies as soon as the process hears of it:
  margin.keywatch; within `server.key_cache_ttl_s` at worst). A
  session ends with the secret that made it: one issued before the key's last rotation ends when the old
  secret's grace does (at once for a rotation with grace 0), as after a logout.
- The login and logout forms are the only POSTs that are not JSON: they must come from this gateway's own
  pages (Origin), and the login form is read with a 4 KB limit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from margin.api import edge
from margin.config import ServerConfig
from margin.errors import AuthenticationFailed, ConfigError, PermissionDenied
from margin.keycache import KeyCache
from margin.keys import bearer_token, principal_of
from margin.types import ANONYMOUS, Principal

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


SESSION_SHAPE = re.compile(r"v2\.([0-9a-f]{1,32})\.([0-9]{1,15})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str
    issued_ms: int  # a logout ends the key's sessions issued before it (`KeyRecord.sessions_not_before`)


class Sessions:
    """Dashboard sessions as signed tokens `v2.<key id>.<issued, Unix ms>.<expiry, Unix s>.<HMAC-SHA256>`: the
    cookie names a key, when the login began and when it ends, and only this gateway (or a replica with the
    same secret) can make one. A logout ends the key's sessions issued until then, on the server."""

    def __init__(self, secret: bytes, max_age_s: int = COOKIE_MAX_AGE_S) -> None:
        self._secret = secret
        self.max_age_s = max_age_s

    @classmethod
    def from_config(cls, server: ServerConfig) -> Sessions:
        if server.session_secret_env is None:
            return cls(secrets.token_bytes(32))
        secret = os.environ.get(server.session_secret_env, "")
        if len(secret) < 16:
            raise ConfigError(f"server.session_secret_env: ${server.session_secret_env} must hold 16+ characters")
        return cls(secret.encode())

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, key_id: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        payload = f"v2.{key_id}.{int(now * 1000)}.{int(now + self.max_age_s)}"
        return f"{payload}.{self._sign(payload)}"

    def read(self, token: str, now: float | None = None) -> Session | None:
        """The session of a genuine, unexpired token; None for anything else."""
        match = SESSION_SHAPE.fullmatch(token)
        if match is None or int(match.group(3)) <= (time.time() if now is None else now):
            return None
        payload = token[: match.start(4) - 1]
        if not hmac.compare_digest(self._sign(payload), match.group(4)):
            return None
        return Session(match.group(1), int(match.group(2)))


async def principal_for(keys: KeyCache, token: str | None) -> Principal:
    """The principal of an API key (the login form's, or a bearer header's)."""
    if await keys.open_now():
        return ANONYMOUS
    if token is None:
        raise AuthenticationFailed(
            "the dashboard needs an API key: log in at /dashboard/login or send `Authorization: Bearer <key>`",
            code="missing_api_key",
        )
    return principal_of(await keys.lookup(token))


async def _principal(request: Request) -> Principal:
    services = request.app.state.services
    keys: KeyCache = services.keys
    session = request.cookies.get(COOKIE)
    if bearer_token(request.headers) is not None or not session or await keys.open_now():
        return await principal_for(keys, bearer_token(request.headers))
    found = services.sessions.read(session)
    record = None if found is None else await keys.lookup_id(found.key_id)
    if found is None or (record is not None and record.session_ended(found.issued_ms, datetime.now(UTC))):
        raise AuthenticationFailed("the dashboard session has ended or is not valid: log in again")
    return principal_of(record)


async def viewer(request: Request) -> Viewer:
    principal = await _principal(request)
    if principal.is_admin or principal.key_id is None:
        return Viewer(principal, full=True)
    if principal.team is not None:
        return Viewer(principal, full=False, team=principal.team)
    return Viewer(principal, full=False, key_id=principal.key_id)


def require_full(who: Viewer, what: str) -> None:
    if not who.full:
        raise PermissionDenied(f"{what} spans teams; it needs an admin key")


def same_origin(request: Request) -> bool:
    """A form POST must come from a page of this gateway (the Origin header, when a browser sends one)."""
    return edge.same_origin(request.headers.get("origin"), request.headers.get("host"))


async def form_key(request: Request) -> str:
    """The login form's key, read with a 4 KB limit (413 beyond it)."""
    values = parse_qs((await edge.read_body(request, MAX_FORM_BYTES)).decode("utf-8", "replace"))
    return (values.get("key") or [""])[0].strip()


def set_login_cookie(response: Response, session: str, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        session,
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
