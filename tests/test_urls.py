"""`margin.urls.hide_password`: the password of a configured URL as `***`, everything else as the operator
wrote it (or as SQLAlchemy renders a database URL that has one), and a URL without one unchanged."""

from __future__ import annotations

import pytest

from margin.urls import hide_password

HIDDEN = [
    # PostgreSQL (SQLAlchemy's parser: the one the ledger uses)
    ("postgresql://margin:s3cret@db/margin", "postgresql://margin:***@db/margin"),
    ("postgresql+psycopg://margin:s3cret@db:5432/margin", "postgresql+psycopg://margin:***@db:5432/margin"),
    ("postgresql://:s3cret@db/margin", "postgresql://:***@db/margin"),
    ("postgresql://margin:@db/margin", "postgresql://margin:***@db/margin"),  # empty, but a password all the same
    ("postgresql://margin:p%40s3cret%2Fw%3Ard@db/margin", "postgresql://margin:***@db/margin"),  # percent-encoded
    ("postgresql://margin:s3cret@[::1]:5432/margin", "postgresql://margin:***@[::1]:5432/margin"),
    ("postgresql://margin:s3cret@[2001:db8::7]/margin", "postgresql://margin:***@[2001:db8::7]/margin"),
    (  # a unix socket: the directory is a query parameter (SQLAlchemy re-encodes it)
        "postgresql://margin:s3cret@/margin?host=/var/run/postgresql",
        "postgresql://margin:***@/margin?host=%2Fvar%2Frun%2Fpostgresql",
    ),
    ("postgresql://db/margin?user=margin&password=s3cret", "postgresql://db/margin?user=margin&password=***"),
    ("postgresql://db/margin?sslpassword=s3cret&x=1", "postgresql://db/margin?sslpassword=***&x=1"),
    ("postgresql://margin:pa/s3cret@db/margin", "postgresql://***@db/margin"),  # `/` unencoded: ambiguous
    # unencoded `@` (SQLAlchemy would take `ss@db` for the host), a list of hosts, a port that is no number:
    # nothing parses it as the driver will, so all before the last `@` goes
    ("postgresql://margin:p@s3cret@db/margin", "postgresql://***@db/margin"),
    ("postgresql://margin:s3cret@h1:5432,h2:5433/margin", "postgresql://***@h1:5432,h2:5433/margin"),
    ("postgresql://margin:s3cret@db:54x/margin", "postgresql://***@db:54x/margin"),
    ("postgres ql://margin:s3cret@db/margin", "postgres ql://***@db/margin"),  # no scheme at all
    # Redis (urllib.parse, as redis-py reads it): the rest exactly as written
    ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("redis://default:s3cret@cache:6379/2", "redis://default:***@cache:6379/2"),
    (
        "rediss://:s3cret@cache.example:6380/1?ssl_cert_reqs=none",
        "rediss://:***@cache.example:6380/1?ssl_cert_reqs=none",
    ),
    ("redis://:s3cret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
    ("redis://:p%40s3cret%3A%2F@cache/0", "redis://:***@cache/0"),
    ("redis://:p@s3cret@cache/0", "redis://***@cache/0"),  # two `@`: all before the last goes
    # a password cut at an unencoded `/`, `?` or `#` whose start reads as a port (review, 2026-12-05)
    ("redis://:1234/s3cret@cache:6379/0", "redis://***@cache:6379/0"),
    ("redis://user:5678?s3cret@c/0", "redis://***@c/0"),
    ("redis://:12#s3cret@c/0", "redis://***@c/0"),
    ("redis://:p@s3/cret@cache/0", "redis://***@cache/0"),
    ("postgresql://margin:p@s3/cret@db/m", "postgresql://***@db/m"),
    ("https://curves.example/grid.csv?token=s3cret", "https://curves.example/grid.csv?token=***"),
    ("https://curves.example/g.csv?x=1&api_key=s3cret&y=2", "https://curves.example/g.csv?x=1&api_key=***&y=2"),
    ("https://curves.example/g.csv?client_secret=s3cret", "https://curves.example/g.csv?client_secret=***"),
    ("redis://u:pa/s3cret@cache/0", "redis://***@cache/0"),  # `pa` is no port: unreadable
    ("unix://:s3cret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
    ("unix:///run/redis.sock?db=2&password=s3cret", "unix:///run/redis.sock?db=2&password=***"),
    ("redis://cache:6379/0?PASSWORD=s3cret", "redis://cache:6379/0?PASSWORD=***"),
    ("https://user:s3cret@curves.example/grid.csv", "https://user:***@curves.example/grid.csv"),
]

UNCHANGED = [
    "sqlite:///margin.db",
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:////var/lib/margin/ledger.db",
    "sqlite:////tmp/odd path/a:b@c.db",  # SQLAlchemy would re-encode this; without a password it is left be
    "sqlite:///~/m.db?mode=ro&uri=true",
    "postgresql://db/margin",
    "postgresql://margin@db/margin",  # a user, no password
    "postgresql://margin@/margin?host=/var/run/postgresql",
    "postgresql://margin@[::1]:5432/margin?sslmode=require",
    "redis://cache:6379/0",
    "redis://user@cache:6379",
    "redis://[::1]:6379/0",
    "rediss://cache.example:6380/1",
    "unix:///run/redis.sock?db=2",
    "unix:///tmp/margin-redis-x1/redis.sock",
    "http://collector:4318/v1/traces",
    "/var/lib/margin/curves.csv",
    "builtin",
    "",
]


@pytest.mark.parametrize(("url", "shown"), HIDDEN)
def test_the_password_is_hidden(url: str, shown: str) -> None:
    assert hide_password(url) == shown
    assert "s3cret" not in shown


@pytest.mark.parametrize("url", UNCHANGED)
def test_a_url_without_a_password_is_left_as_written(url: str) -> None:
    assert hide_password(url) == url
