from __future__ import annotations

import pytest

from margin.guard.secrets import find_secrets, looks_random
from margin.guard.spans import resolve_overlaps


def found(text: str) -> list[str]:
    return [s.text for s in resolve_overlaps(find_secrets(text))]


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2,
        "sk-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v2W3x4",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345678",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
        "aZ3kP9qLmN2xR7tV5wY8bC1d",
        "q8Lm/3vXr+T0bNe7KpW2yZc5/Hd9Gj4Fs1Ua6Qo8Rx",  # AWS-secret-like base64
    ],
)
def test_secret_shapes(secret: str) -> None:
    assert found(f"use {secret} now") == [secret]


def test_pem_header_alone_is_a_secret() -> None:
    assert found("pasted: -----BEGIN OPENSSH PRIVATE KEY----- then it cut off") == [
        "-----BEGIN OPENSSH PRIVATE KEY-----"
    ]


def test_credential_values_only_the_value_is_the_span() -> None:
    text = 'DB_PASSWORD=hunter2hunter2\napi_key: "x9Y8z7W6v5"\nAuthorization: Bearer abcdefghijklmnopqrstuvwx1234'
    assert found(text) == ["hunter2hunter2", "x9Y8z7W6v5", "abcdefghijklmnopqrstuvwx1234"]


@pytest.mark.parametrize(
    "text",
    [
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",  # git SHA: hex policy
        "id 123e4567-e89b-12d3-a456-426614174000",
        "digest e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "class AbstractSingletonProxyFactoryBean2 extends Base",
        "const MAX_RETRY_COUNT_FOR_UPLOADS_2 = 3",
        "see reports/2024/Q2_Revenue_Summary_Final_v3.xlsx",
        "path /usr/local/lib/python3.11/site-packages/Foo2",
        "RSA SHA256:yyjVw5HanSBeVRsfAGeAbP0VxNjAe/9i0mYtluYI0KN",  # SSH fingerprint
        "password: ********",
        "token: expired",
        "the key point is simple",
    ],
)
def test_secret_negatives(text: str) -> None:
    assert found(text) == []


def test_looks_random_needs_length_and_both_cases() -> None:
    assert looks_random("aZ3kP9qLmN2xR7tV5wY8bC1d")
    assert not looks_random("aZ3kP9qLmN2xR7tV5w")  # 18 characters
    assert not looks_random("az3kp9qlmn2xr7tv5wy8bc1d")  # one case only


def test_vendor_shape_outranks_the_generic_reading() -> None:
    key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    spans = resolve_overlaps(find_secrets(f"key {key}"))
    assert [(s.text, s.score) for s in spans] == [(key, 0.99)]
