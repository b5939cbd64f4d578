"""Configured URLs as margin shows them (the start-up banner, `margin config show`, error messages, log lines,
eval run files), with the password as `***`. A database URL (`postgresql://margin:s3cret@db/margin`) is read
by SQLAlchemy, the parser the ledger uses, so what it would send as the password is what is hidden (SQLAlchemy
renders the rest); a Redis URL (`redis://:s3cret@host:6379/0`, `rediss://`, `unix://`) or an http(s) one by
`urllib.parse`, as redis-py and httpx read it, with all but the password kept as written. A `password=` query
parameter (libpq and redis-py take one) is hidden too. A URL without a password comes back unchanged,
character for character (a SQLite path stays as written); one its parser cannot read, or whose user part is
ambiguous (a second `@`, or a `/`, `?` or `#` before the `@`: an unencoded one in the password, which a parser
may read as the end of the host), loses all between `://` and its last `@`."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import sqlalchemy as sa

MASK = "***"
# schemes read with urllib.parse (as redis-py and httpx do); any other URL is read by SQLAlchemy
URLLIB_SCHEMES = frozenset({"redis", "rediss", "unix", "valkey", "valkeys", "http", "https"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# a query parameter that holds a secret: password, sslpassword, client_secret, token, access_token, api_key…
_QUERY_PASSWORD = re.compile(r"([?&][^=&#]*(?:password|passwd|secret|token|api[_-]?key)=)[^&#]*", re.IGNORECASE)
_USERINFO = re.compile(r"^(.*?://).*@", re.DOTALL)  # from the first `://` to the last `@`


def hide_password(url: str) -> str:
    """`url` with its password (in the user part or a `password=` parameter) replaced by `***`."""
    scheme, is_url, _ = url.partition("://")
    if not is_url:  # a path or a name
        return url
    try:
        if not _SCHEME.fullmatch(scheme):
            raise ValueError(f"no URL scheme: {scheme!r}")
        if not scheme.lower().startswith("sqlite"):  # a file path may hold an `@`; no password can
            _one_user_part(url[len(scheme) + 3 :])
        shown = _by_urllib(url) if scheme.lower() in URLLIB_SCHEMES else _by_sqlalchemy(url)
    except ValueError:  # neither parser reads it as the client would: hide all that could be a password
        shown = _USERINFO.sub(rf"\1{MASK}@", url)
    return _query(shown)


def _one_user_part(rest: str) -> None:
    """Refuse a URL where a password could run past what a parser takes for its user part: a second `@`, or a
    `/`, `?` or `#` before the `@` (either parser may end the host there and show the rest as a path)."""
    at = rest.rfind("@")
    if at >= 0 and (rest.count("@") > 1 or any(mark in rest[:at] for mark in "/?#")):
        raise ValueError("the user part is ambiguous")


def _by_sqlalchemy(url: str) -> str:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(str(exc)) from exc
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def _by_urllib(url: str) -> str:
    parts = urlsplit(url)
    _ = parts.port  # a ValueError when the port is no number
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return url
    start = url.index("://") + 3  # the netloc follows, as written
    return f"{url[:start]}{user}:{MASK}@{host}{url[start + len(parts.netloc) :]}"


def _query(url: str) -> str:
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", url)
