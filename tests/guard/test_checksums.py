from __future__ import annotations

import pytest

from margin.guard.checksums import (
    card_prefix_known,
    iban_valid,
    luhn_valid,
    mean_segment_length,
    shannon_entropy,
    ssn_valid,
)


@pytest.mark.parametrize("digits", ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"])
def test_luhn_accepts_test_card_numbers(digits: str) -> None:
    assert luhn_valid(digits)


@pytest.mark.parametrize("digits", ["4111111111111112", "5555555555554443", "1234567812345678"])
def test_luhn_rejects_wrong_check_digit(digits: str) -> None:
    assert not luhn_valid(digits)


def test_card_prefixes() -> None:
    assert card_prefix_known("4111111111111111")
    assert card_prefix_known("2221000000000009")
    assert not card_prefix_known("9781234567897")  # ISBN-13 prefix
    assert not card_prefix_known("1710498151123")  # epoch milliseconds


@pytest.mark.parametrize("iban", ["GB82WEST12345698765432", "DE89370400440532013000", "NL91ABNA0417164300"])
def test_iban_valid(iban: str) -> None:
    assert iban_valid(iban)


@pytest.mark.parametrize(
    "iban",
    [
        "GB82WEST12345698765433",  # checksum broken
        "DE8937040044053201300",  # one short for Germany
        "XX82WEST12345698765432",  # not an IBAN country
        "GB82WEST1234569876543!",
    ],
)
def test_iban_invalid(iban: str) -> None:
    assert not iban_valid(iban)


@pytest.mark.parametrize(
    ("area", "group", "serial", "ok"),
    [
        ("123", "45", "6789", True),
        ("000", "12", "3456", False),
        ("666", "12", "3456", False),
        ("912", "12", "3456", False),
        ("123", "00", "3456", False),
        ("123", "45", "0000", False),
    ],
)
def test_ssn_rules(area: str, group: str, serial: str, ok: bool) -> None:
    assert ssn_valid(area, group, serial) is ok


def test_entropy_and_segments_separate_random_from_identifiers() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)
    assert mean_segment_length("aZ3kP9qLmN2xR7tV5wY8bC1d") < 2.0
    assert mean_segment_length("AbstractSingletonProxyFactoryBean2") > 5.0
