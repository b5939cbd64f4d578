from __future__ import annotations

import hashlib
import hmac

import pytest

from margin.errors import ConfigError
from margin.guard.pseudonym import UserPseudonyms


def test_plain_and_keyed_pseudonyms() -> None:
    plain = UserPseudonyms()
    assert plain(None) is None
    value = plain("jane@example.org")
    assert value is not None and value.startswith("u_") and len(value) == 34 and "jane" not in value
    assert value == plain("jane@example.org") != plain("bob@example.org")
    assert value != "u_" + hashlib.sha256(b"jane@example.org").hexdigest()[:32]  # domain-separated
    keyed = UserPseudonyms(b"s3cret")("jane@example.org")
    expected = hmac.new(b"s3cret", b"margin-user\x00jane@example.org", hashlib.sha256).hexdigest()[:32]
    assert keyed == "u_" + expected != value
    assert plain("x" * 100_000) is not None and len(plain("x" * 100_000) or "") == 34  # fits the column


def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARGIN_TEST_USER_KEY", "s3cret")
    assert UserPseudonyms.from_env("MARGIN_TEST_USER_KEY")("a") == UserPseudonyms(b"s3cret")("a")
    assert UserPseudonyms.from_env(None)("a") == UserPseudonyms()("a")
    monkeypatch.delenv("MARGIN_TEST_USER_KEY")
    with pytest.raises(ConfigError, match="MARGIN_TEST_USER_KEY"):
        UserPseudonyms.from_env("MARGIN_TEST_USER_KEY")
