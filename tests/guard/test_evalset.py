from __future__ import annotations

import pytest

from margin.evals.guard import PRECISION_TARGET, RECALL_TARGET, score_pii
from margin.guard import PiiScanner
from margin.guard.checksums import iban_valid, luhn_valid
from margin.guard.evalset import LOCALES, Sample, generate_pii
from margin.guard.evalset_injection import generate_injection
from margin.guard.spans import STRUCTURED_ENTITIES


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return generate_pii(1000, 7)


def test_generation_is_deterministic() -> None:
    assert generate_pii(50, 3) == generate_pii(50, 3)
    assert generate_pii(50, 3) != generate_pii(50, 4)


def test_generation_does_not_depend_on_clock_or_timezone() -> None:
    """Another process, a later second and another time zone must produce the very same texts."""
    import os
    import subprocess
    import sys

    code = "from margin.guard.evalset import generate_pii; print(repr(generate_pii(300, 9)))"
    env = {**os.environ, "TZ": "America/New_York"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == repr(generate_pii(300, 9))


def test_gold_spans_cover_every_entity_and_locale(samples: list[Sample]) -> None:
    assert len(samples) == 1000
    support = dict.fromkeys(STRUCTURED_ENTITIES, 0)
    for sample in samples:
        for span in sample.spans:
            support[span.entity] += 1
            assert 0 <= span.start < span.end <= len(sample.text)
            assert sample.text[span.start : span.end].strip() == sample.text[span.start : span.end]
    assert min(support.values()) >= 50
    assert {s.locale for s in samples} == {locale for locale, _ in LOCALES}


def test_gold_values_are_valid_and_negatives_are_not(samples: list[Sample]) -> None:
    for sample in samples:
        for span in sample.spans:
            value = sample.text[span.start : span.end]
            if span.entity == "CREDIT_CARD":
                assert luhn_valid(value.replace(" ", "").replace("-", ""))
            if span.entity == "IBAN":
                assert iban_valid(value.replace(" ", ""))


def test_targets_met_on_generated_set(samples: list[Sample]) -> None:
    scanner = PiiScanner(ner=False)
    scores, errors = score_pii(samples, [scanner.scan(s.text) for s in samples])
    for entity, score in scores.items():
        assert score.recall >= RECALL_TARGET, (entity, score, errors.missed[:5])
        assert score.precision >= PRECISION_TARGET, (entity, score, errors.false_alarms[:5])


def test_injection_set_has_both_labels_and_families() -> None:
    samples = generate_injection(7)
    assert generate_injection(7) == samples
    families = {s.family for s in samples}
    assert {"override", "persona", "exfiltration", "role_confusion", "indirect", "encoded_base64", "benign"} <= families
    assert sum(s.label for s in samples) >= 150
    assert sum(not s.label for s in samples) >= 100


def test_hard_negatives_are_really_invalid() -> None:
    import ipaddress
    from random import Random

    from faker import Faker

    from margin.guard.checksums import ssn_valid
    from margin.guard.evalnegatives import bad_card, bad_iban, bad_ip, bad_ssn

    fake, rng = Faker("de_DE"), Random(5)
    fake.seed_instance(5)
    for _ in range(200):
        assert not luhn_valid(bad_card(fake, rng).replace(" ", "").replace("-", ""))
        assert not iban_valid(bad_iban(fake, rng).replace(" ", ""))
        assert not ssn_valid(*bad_ssn(fake, rng).split("-"))
        ip = bad_ip(fake, rng)
        for parse in (ipaddress.IPv4Address, ipaddress.IPv6Address):
            with pytest.raises(ValueError):
                parse(ip)


NAIVE_SHAPES = {
    "EMAIL": r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\b",
    "PHONE": r"(?:\+|\b)\d[\d ().-]{6,16}\d\b",
    "CREDIT_CARD": r"\b\d(?:[ -]?\d){12,18}\b",
    "IBAN": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
    "US_SSN": r"\b\d{3}[- ]\d{2}[- ]\d{4}\b",
    "IP_ADDRESS": r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}\b",
    "SECRET": r"\b[A-Za-z0-9_+/-]{20,}\b",
}


def test_hard_negatives_defeat_shape_only_regexes(samples: list[Sample]) -> None:
    """Without validation and context rules, each entity's precision collapses: the negatives are hard."""
    import re

    from margin.guard.spans import Span

    predictions = [
        [Span(e, m.start(), m.end(), m.group(), 0.5) for e, rx in NAIVE_SHAPES.items() for m in re.finditer(rx, s.text)]
        for s in samples
    ]
    scores, _ = score_pii(samples, predictions)
    for entity, score in scores.items():
        assert score.precision < 0.85, (entity, score.precision)
