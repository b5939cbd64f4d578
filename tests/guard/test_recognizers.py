from __future__ import annotations

import pytest

from margin.guard.recognizers import find_cards, find_emails, find_ibans, find_ips, find_ssns


def texts(spans: object) -> list[str]:
    return [s.text for s in spans]  # type: ignore[attr-defined]


def test_email_positives_including_unicode_local_part() -> None:
    text = "Mail jane.doe+billing@example.co.uk, JOSÉ.müller@beispiel.de or a@b.io today."
    assert texts(find_emails(text)) == ["jane.doe+billing@example.co.uk", "JOSÉ.müller@beispiel.de", "a@b.io"]


@pytest.mark.parametrize(
    "text", ["ping @channel", "user@localhost", "react@18.2.0", "git@github:org/repo", "a..b@example.com"]
)
def test_email_negatives(text: str) -> None:
    assert texts(find_emails(text)) == []


def test_email_offsets_match_text() -> None:
    text = "x" * 100 + " write to someone@example.org please"
    (span,) = find_emails(text)
    assert text[span.start : span.end] == "someone@example.org"


@pytest.mark.parametrize(
    "card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005", "5555555555554444"]
)
def test_card_positives(card: str) -> None:
    assert texts(find_cards(f"card {card} exp 09/27")) == [card]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 declined",  # Luhn fails
        "ISBN 9780306406157",  # 978 is not a card network prefix
        "order #4111111111111111",  # id context
        "card 4111 11 11111 11111",  # odd grouping
        "tracking 9400 1000 0000 0000 0000 00",  # 22 digits: no 16-digit window may be cut out of it
        "IBAN IT84 P120 3043 8900 2119 9774 213",  # tail of an IBAN-shaped string
        "call +4915791416220",  # phone in E.164
    ],
)
def test_card_negatives(text: str) -> None:
    assert texts(find_cards(text)) == []


@pytest.mark.parametrize("iban", ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "NL91 ABNA 0417 1643 00"])
def test_iban_positives(iban: str) -> None:
    assert texts(find_ibans(f"pay to {iban}.")) == [iban]


@pytest.mark.parametrize(
    "text",
    [
        "pay to GB82 WEST 1234 5698 7654 33.",  # checksum
        "pay to DE89 3704 0044 0532 0130 0.",  # too short
        "pay to GB82 WEST 1234 5698 7654 32X",  # glued to more text
        "ticket AB12 CDEF 1234 5678",  # country AB does not exist
    ],
)
def test_iban_negatives(text: str) -> None:
    assert texts(find_ibans(text)) == []


def test_ssn_positives() -> None:
    assert texts(find_ssns("SSN 123-45-6789, alt 078 05 1121")) == ["123-45-6789", "078 05 1121"]
    assert texts(find_ssns("my social security number is 123456789")) == ["123456789"]


@pytest.mark.parametrize(
    "text",
    [
        "SSN 000-12-3456",
        "SSN 666-12-3456",
        "SSN 912-12-3456",
        "SSN 123-00-4567",
        "SSN 123-45-0000",
        "order 123456789",  # bare 9 digits need SSN context
        "SSN 123-45-6789-1",  # longer number
    ],
)
def test_ssn_negatives(text: str) -> None:
    assert texts(find_ssns(text)) == []


def test_bare_ssn_needs_the_context_word_right_before_it() -> None:
    # another number sits between "SSN" and the bare digits: those are a phone, not an SSN
    assert texts(find_ssns("SSN 072-56-7555, phone 304133885")) == ["072-56-7555"]


def test_ip_positives() -> None:
    text = (
        "from 192.168.1.20, [2001:db8::1] and fe80::1ff:fe23:4567:890a; full 2001:0db8:85a3:0000:0000:8a2e:0370:7334."
    )
    assert texts(find_ips(text)) == [
        "192.168.1.20",
        "2001:db8::1",
        "fe80::1ff:fe23:4567:890a",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "bad 256.1.1.1",
        "bad 999.1.1.1",
        "bad 10.0.0.256",
        "oid 1.3.6.1.4.1",
        "version 4.2.1.7",
        "v10.2.0.1",
        "build 4.2.1.7",
        "mac 00:1A:2B:3C:4D:5E",
        "at 10:22:31",
        "std::vector",
        "just ::",
    ],
)
def test_ip_negatives(text: str) -> None:
    assert texts(find_ips(text)) == []
