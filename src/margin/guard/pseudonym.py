"""The OpenAI `user` field as the ledger keeps it: a pseudonym, never the raw value.

`user` is often an e-mail address or an account id. The ledger stores `u_` + 32 hex digits of SHA-256 over it
(domain-separated), or of HMAC-SHA256 with a secret when `guard.user_hash_key_env` names one: a plain hash of a
guessable value (an e-mail) can be reversed with a dictionary, a keyed one cannot without the secret. The same
user always maps to the same pseudonym, so `margin report --by user` still groups by user."""

from __future__ import annotations

import hashlib
import hmac
import os

from margin.errors import ConfigError

PREFIX = "u_"
_DOMAIN = b"margin-user\x00"


class UserPseudonyms:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key

    @classmethod
    def from_env(cls, variable: str | None) -> UserPseudonyms:
        """Keyed by the secret in environment variable `variable`; unkeyed when `variable` is None. A named
        variable that is unset or empty is a configuration error (fail closed, not a silent plain hash)."""
        if variable is None:
            return cls()
        secret = os.environ.get(variable, "")
        if not secret:
            raise ConfigError(f"guard.user_hash_key_env names {variable}, which is not set in the environment")
        return cls(secret.encode())

    def __call__(self, user: str | None) -> str | None:
        if user is None:
            return None
        data = user.encode("utf-8", "surrogatepass")
        if self._key is None:
            digest = hashlib.sha256(_DOMAIN + data).hexdigest()
        else:
            digest = hmac.new(self._key, _DOMAIN + data, hashlib.sha256).hexdigest()
        return PREFIX + digest[:32]
