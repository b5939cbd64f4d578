from __future__ import annotations

import sys
import time
import types
from typing import Any

import pytest

from margin.errors import ConfigError
from margin.guard import PiiScanner, Span, count_entities
from margin.guard.spans import resolve_overlaps

MIXED = (
    "Hi, I'm Jane (jane.doe@example.com, +44 20 7946 0958). Card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32,"
    " SSN 123-45-6789, from 203.0.113.7 with key AKIAIOSFODNN7EXAMPLE. Order 100-4821337-1234567 on 2024-03-15."
)


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner(ner=False)


def test_scan_finds_each_structured_type_once(scanner: PiiScanner) -> None:
    spans = scanner.scan(MIXED)
    assert [(s.entity, s.text) for s in spans] == [
        ("EMAIL", "jane.doe@example.com"),
        ("PHONE", "+44 20 7946 0958"),
        ("CREDIT_CARD", "4111 1111 1111 1111"),
        ("IBAN", "GB82 WEST 1234 5698 7654 32"),
        ("US_SSN", "123-45-6789"),
        ("IP_ADDRESS", "203.0.113.7"),
        ("SECRET", "AKIAIOSFODNN7EXAMPLE"),
    ]
    assert all(MIXED[s.start : s.end] == s.text for s in spans)
    assert count_entities(spans) == {
        "CREDIT_CARD": 1,
        "EMAIL": 1,
        "IBAN": 1,
        "IP_ADDRESS": 1,
        "PHONE": 1,
        "SECRET": 1,
        "US_SSN": 1,
    }


def test_entities_filter(scanner: PiiScanner) -> None:
    only = PiiScanner(["EMAIL", "IBAN"], ner=False)
    assert {s.entity for s in only.scan(MIXED)} == {"EMAIL", "IBAN"}


def test_unknown_entity_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PASSPORT"):
        PiiScanner(["EMAIL", "PASSPORT"])


def test_overlaps_resolved_by_score_then_length() -> None:
    spans = [
        Span("PHONE", 0, 10, "x" * 10, 0.7),
        Span("CREDIT_CARD", 2, 12, "x" * 10, 0.9),
        Span("SECRET", 20, 30, "x" * 10, 0.6),
        Span("SECRET", 18, 34, "x" * 16, 0.6),
        Span("EMAIL", 40, 45, "x" * 5, 0.95),
    ]
    kept = resolve_overlaps(spans)
    assert [(s.entity, s.start, s.end) for s in kept] == [("CREDIT_CARD", 2, 12), ("SECRET", 18, 34), ("EMAIL", 40, 45)]


def test_iban_digits_are_not_also_reported_as_phone_or_card(scanner: PiiScanner) -> None:
    spans = scanner.scan("Transfer to DE89 3704 0044 0532 0130 00 please, call me on 030 1234567")
    assert [(s.entity, s.text) for s in spans] == [("IBAN", "DE89 3704 0044 0532 0130 00"), ("PHONE", "030 1234567")]


def test_clean_text_returns_nothing(scanner: PiiScanner) -> None:
    assert scanner.scan("") == []
    assert scanner.scan("Can you summarize this article in three bullet points?") == []
    assert scanner.scan("Release v2.14.3 shipped on 2024-03-15 with 3 fixes.") == []


def test_fast_path_for_short_clean_text(scanner: PiiScanner) -> None:
    text = "Can you summarize this article in three bullet points?"
    runs = 2000
    start = time.perf_counter()
    for _ in range(runs):
        scanner.scan(text)
    per_scan_us = (time.perf_counter() - start) / runs * 1e6
    assert per_scan_us < 100  # a few µs on an idle machine; generous for shared CI


def test_ner_unavailable_is_reported_not_raised() -> None:
    scanner = PiiScanner(ner=True, ner_model="margin_test_no_such_model")
    assert not scanner.ner_enabled
    assert "is installed" in scanner.ner_status and "unavailable" in scanner.ner_status
    assert "PERSON" not in scanner.entities
    assert [s.entity for s in scanner.scan("Mail jane@example.com")] == ["EMAIL"]


class _Ent:
    def __init__(self, text: str, label: str, start: int) -> None:
        self.text, self.label_, self.start_char, self.end_char = text, label, start, start + len(text)


def _fake_model_package() -> types.ModuleType:
    """Stands in for an installed spaCy model package: `load()` returns a callable pipeline."""

    def load(**_: Any) -> Any:
        def nlp(text: str) -> Any:
            ents = [_Ent(w, label, text.index(w)) for w, label in (("Jane Doe", "PERSON"), ("Berlin", "GPE"))]
            ents.append(_Ent("Acme", "ORG", text.index("Acme")))
            return types.SimpleNamespace(ents=ents)

        return nlp

    module = types.ModuleType("margin_test_fake_model")
    module.load = load  # type: ignore[attr-defined]
    return module


def test_ner_spans_when_a_model_package_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "margin_test_fake_model", _fake_model_package())
    scanner = PiiScanner(ner=True, ner_model="margin_test_fake_model")
    assert scanner.ner_enabled
    text = "Jane Doe from Acme moved to Berlin; mail jane@example.com"
    assert [(s.entity, s.text) for s in scanner.scan(text)] == [
        ("PERSON", "Jane Doe"),
        ("LOCATION", "Berlin"),
        ("EMAIL", "jane@example.com"),
    ]


def test_ner_off_by_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "margin_test_fake_model", _fake_model_package())
    scanner = PiiScanner(ner=False, ner_model="margin_test_fake_model")
    assert not scanner.ner_enabled
    assert scanner.ner_status == "NER off"


@pytest.mark.parametrize(
    "text",
    ["a@" * 25000, "x@" + "a." * 25000, "1 " * 25000, "1." * 25000, "a:" * 25000, "QUJD" * 12500 + "!", "(1) " * 12500],
)
def test_pathological_inputs_stay_fast(scanner: PiiScanner, text: str) -> None:
    from margin.guard import InjectionDetector

    start = time.perf_counter()
    scanner.scan(text)
    InjectionDetector().check(text)
    assert time.perf_counter() - start < 2.0  # ~0.1 s here; quadratic behaviour would take minutes


def test_short_full_form_ipv6_passes_the_signals(scanner: PiiScanner) -> None:
    assert [(s.entity, s.text) for s in scanner.scan("host 1:2:3:4:5:6:7:8 up")] == [("IP_ADDRESS", "1:2:3:4:5:6:7:8")]
