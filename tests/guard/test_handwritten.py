"""Hand-written realistic cases (outside the generator's templates); first run as a held-out check, now kept
as regression cases. The scanner's result must equal the expected (entity, text) list exactly."""

from __future__ import annotations

import pytest

from margin.guard import PiiScanner

CASES: list[tuple[str, list[tuple[str, str]]]] = [
    ("Can you email the contract to m.rossi@studiolegale.it before Friday?", [("EMAIL", "m.rossi@studiolegale.it")]),
    ("my number changed, it's now 07700 900123 (UK mobile)", [("PHONE", "07700 900123")]),
    ("ring me on +353 1 234 5678 after 5", [("PHONE", "+353 1 234 5678")]),
    ("Tel.: +49 (0)89 1234567", [("PHONE", "+49 (0)89 1234567")]),
    ("call 212-555-0199 or text 646 555 0147", [("PHONE", "212-555-0199"), ("PHONE", "646 555 0147")]),
    ("Whatsapp +31 6 12345678", [("PHONE", "+31 6 12345678")]),
    ("you can reach me at 06-12345678", [("PHONE", "06-12345678")]),
    ("Mi numero es +34 612 34 56 78", [("PHONE", "+34 612 34 56 78")]),
    ("the hotline 1-800-555-0199 is closed", [("PHONE", "1-800-555-0199")]),
    ("Card: 5500 0000 0000 0004 exp 12/26 cvv 123", [("CREDIT_CARD", "5500 0000 0000 0004")]),
    ("charged to amex 3400 000000 00009", [("CREDIT_CARD", "3400 000000 00009")]),
    ("my visa is 4012888888881881", [("CREDIT_CARD", "4012888888881881")]),
    ("IBAN: BE68 5390 0754 7034", [("IBAN", "BE68 5390 0754 7034")]),
    ("please wire to CH93 0076 2011 6238 5295 7", [("IBAN", "CH93 0076 2011 6238 5295 7")]),
    ("iban fr1420041010050500013m02606", [("IBAN", "fr1420041010050500013m02606")]),
    ("SSN: 219-09-9999", [("US_SSN", "219-09-9999")]),
    ("ssn 219099999", [("US_SSN", "219099999")]),
    ("ssh admin@10.0.0.5 failed", [("IP_ADDRESS", "10.0.0.5")]),
    ("curl http://172.16.254.1:8080/health", [("IP_ADDRESS", "172.16.254.1")]),
    ("GET / from ::ffff:192.0.2.128", [("IP_ADDRESS", "::ffff:192.0.2.128")]),
    (
        "OPENAI_API_KEY=sk-abc123def456ghi789jkl012mno345pqr678stu901vwx2",
        [("SECRET", "sk-abc123def456ghi789jkl012mno345pqr678stu901vwx2")],
    ),
    (
        "here's the slack token xoxp-2048-4096-8192-abcdefabcdef0123456789",
        [("SECRET", "xoxp-2048-4096-8192-abcdefabcdef0123456789")],
    ),
    ("the webhook secret is 7f3a9c2e1b4d8f6a0c5e9b2d4f7a1c3e", [("SECRET", "7f3a9c2e1b4d8f6a0c5e9b2d4f7a1c3e")]),
    ("password is Tr0ub4dor&3", [("SECRET", "Tr0ub4dor&3")]),
    ("postgres://app:Zx81kLm02pQ@db.internal:5432/prod", [("SECRET", "Zx81kLm02pQ")]),
    # negatives
    ("Meeting moved to 14:30, room 4.12, see ticket JIRA-48213.", []),
    ("Our revenue was $12,345,678.90 in FY2024, up 12.5%.", []),
    ("Install numpy==1.26.4 and torch 2.3.1+cu121", []),
    ("The flight LH 2024 leaves at 07:45 from gate B12.", []),
    ("Order number 112-3456789-0123456 has shipped", []),
    ("Your verification code is 482913", []),
    ("Call stack depth 4096 exceeded at line 1234", []),
    ("Docker image sha256:4bcff63911fcb4448bd4fdacec207030997caf25e9bea4045fa6c8c44de311d1", []),
    ("The patient's MRN is 00012345678", []),
    ("Coordinates 48.8584, 2.2945 (Eiffel Tower)", []),
    ("Serial number: SN-4417-2291-8830", []),
    ("Use the CSS class btn-primary-outline-large-v2", []),
    ("k8s pod api-server-7d9f8c6b5-x2kqz restarted", []),
    ("Phone numbers look like +1 (555) 010-XXXX in docs", []),
    ("Base64 of 'hello': aGVsbG8=", []),
    ("Product EAN 4006381333931", []),
    ("tracking 1Z999AA10123456784", []),
    ("ISBN-13: 978-0-596-52068-7", []),
    ("UUID 550e8400-e29b-41d4-a716-446655440000", []),
    ("Reference: RF18 5390 0754 7034", []),
    ("He scored 1,234,567 points over 2019-2023", []),
    ("Version 10.0.19045.3803 of Windows", []),
    ("The lottery numbers were 4 8 15 16 23 42", []),
    ("dial 112 in an emergency", []),
]


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner(ner=False)


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_handwritten_case(scanner: PiiScanner, text: str, expected: list[tuple[str, str]]) -> None:
    assert [(s.entity, s.text) for s in scanner.scan(text)] == expected
