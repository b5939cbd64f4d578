from __future__ import annotations

import pytest

from margin.guard.phones import find_phones


def found(text: str) -> list[str]:
    return [s.text for s in find_phones(text)]


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "(415) 555-2671",
        "+49 30 123456",
        "0044 20 7946 0958",
        "+1-415-555-2671",
        "415.555.2671",
        "020 7946 0958",
        "04 15 39 15 00",
        "+33 (0)1 41 63 60 83",
        "(05323) 82136",
        "+442079460958",
    ],
)
def test_phone_formats(phone: str) -> None:
    assert found(f"Please call {phone} tomorrow.") == [phone]


def test_bare_digits_need_a_phone_word() -> None:
    assert found("my cell: 4155552671") == ["4155552671"]
    assert found("Reference 4155552671 attached") == []


@pytest.mark.parametrize(
    "text",
    [
        "order 4155552671 shipped",  # id word before a valid number
        "Order #(415) 555-2671",
        "on 2024-03-15 10:22",
        "dated 15/03/2024",
        "PO 2021/92086",
        "SSN-shaped 666-44-6903",
        "location 52.3702, 4.8952",
        "version 6.1.4.3.6.5.3",
        "ip 192.168.100.200",
        "IBAN FR76 3000 6000 0112 3456 7890 189",
        "FedEx 7489 2736 4521",
        "Amex-shaped 3764-794187-02811",
        "total 16 836.11 EUR",
        "epoch 1710498151 seconds",
        "phone 12345",  # too short
    ],
)
def test_phone_negatives(text: str) -> None:
    assert found(text) == []


def test_invalid_number_plan_is_rejected() -> None:
    # right shape, but no US area code starts with 1 and +44 10… is not allocated
    assert found("call (115) 555-2671 or +44 10 0000 0000") == []


def test_regions_are_configurable() -> None:
    assert [s.text for s in find_phones("call 06 12 34 56 78", ("FR",))] == ["06 12 34 56 78"]
    assert [s.text for s in find_phones("call 06 12 34 56 78", ("US",))] == []
