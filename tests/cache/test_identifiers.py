"""Which questions may share a semantic-cache answer: the same names, ids and numbers, in the same order."""

from __future__ import annotations

import pytest

from margin.cache.identifiers import Identifiers


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is the capital of France?", "what is the capital of france"),
        ("What is the capital of France?", "What's the capital city of France"),
        ("How do I learn Python?", "What is the best way to learn Python?"),
        ("How do I reset my password?", "how can i reset my password"),
        ("Please summarize this. Thanks!", "summarize this please"),
        ("How many grams are in 5 kg?", "how many grams in 5 kg"),
        ("Why is the sky not blue at night?", "why is the sky not blue at night"),
    ],
)
def test_paraphrases_may_share(a: str, b: str) -> None:
    assert Identifiers.of(a).compatible(Identifiers.of(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is the status of order 12345?", "What is the status of order 12346?"),
        ("Tell me about John Smith", "Tell me about Jane Smith"),
        ("Paris is nice in May?", "London is nice in May?"),
        ("email jane@x.org please", "email bob@y.org please"),
        ("transfer from 123 to 456", "transfer from 456 to 123"),
        ("is IBM a good employer", "is AMD a good employer"),
        ("What is 2+2?", "What is 2+3?"),
        ("refund <EMAIL_1> now", "refund <EMAIL_2> now"),
        ("How much is 4 kg of rice?", "How much is rice?"),
        ("convert 5 miles to km", "convert 5 km to miles"),
        ("How much is 4 kg of rice?", "How much is 4 lb of rice?"),
        ("Is it safe to eat raw chicken?", "Is it not safe to eat raw chicken?"),
        ("Can I take ibuprofen with coffee?", "Can't I take ibuprofen with coffee?"),
        ("Should I use a VPN?", "Should I never use a VPN?"),
    ],
)
def test_different_identifiers_never_share(a: str, b: str) -> None:
    assert not Identifiers.of(a).compatible(Identifiers.of(b))
    assert not Identifiers.of(b).compatible(Identifiers.of(a))


def test_long_whitespace_runs_are_read_once() -> None:
    text = "word " + " " * 200_000 + "Name"
    assert Identifiers.of(text).marked == frozenset({"name"})
