from __future__ import annotations

import pytest

from margin.guard import PiiScanner, Redaction, StreamRestorer, redact, restore


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner(ner=False)


def test_same_value_same_placeholder_across_messages(scanner: PiiScanner) -> None:
    state = Redaction(scanner)
    first = redact("Mail jane@example.com or bob@example.com", state)
    second = redact("Again: JANE@example.com, and call +44 20 7946 0958", state)
    assert first == "Mail <EMAIL_1> or <EMAIL_2>"
    assert second == "Again: <EMAIL_1>, and call <PHONE_1>"
    assert state.counts() == {"EMAIL": 3, "PHONE": 1}
    assert state.distinct_counts() == {"EMAIL": 2, "PHONE": 1}


def test_card_spellings_share_a_placeholder(scanner: PiiScanner) -> None:
    state = Redaction(scanner)
    assert redact("4111 1111 1111 1111 and 4111-1111-1111-1111", state) == "<CREDIT_CARD_1> and <CREDIT_CARD_1>"


def test_restore_round_trip(scanner: PiiScanner) -> None:
    state = Redaction(scanner)
    text = "I'm at jane@example.com, IBAN GB82 WEST 1234 5698 7654 32, host 10.1.2.3."
    redacted = redact(text, state)
    assert "jane@example.com" not in redacted and "GB82" not in redacted and "10.1.2.3" not in redacted
    assert restore(redacted, state) == text


def test_restore_leaves_unknown_placeholders(scanner: PiiScanner) -> None:
    state = Redaction(scanner)
    redact("mail jane@example.com", state)
    assert restore("<EMAIL_1> and <EMAIL_9> and <b>", state) == "jane@example.com and <EMAIL_9> and <b>"


def test_clean_text_unchanged(scanner: PiiScanner) -> None:
    state = Redaction(scanner)
    assert redact("nothing to see", state) == "nothing to see"
    assert state.counts() == {}


def _stream(state: Redaction, chunks: list[str]) -> str:
    restorer = StreamRestorer(state)
    return "".join(restorer.feed(c) for c in chunks) + restorer.flush()


def test_stream_restorer_every_split_point(scanner: PiiScanner) -> None:
    state = Redaction(scanner)
    redact("jane@example.com and +44 20 7946 0958", state)
    answer = "Sure <EMAIL_1>, I will call <PHONE_1>.<EMAIL_1>"
    expected = "Sure jane@example.com, I will call +44 20 7946 0958.jane@example.com"
    for i in range(len(answer) + 1):
        for j in range(i, len(answer) + 1):
            assert _stream(state, [answer[:i], answer[i:j], answer[j:]]) == expected


def test_stream_restorer_one_character_at_a_time(scanner: PiiScanner) -> None:
    state = Redaction(scanner)
    redact("a@example.com b@example.com c@example.com", state)
    answer = "x<EMAIL_3><EMAIL_2> < <EMAIL_1"
    assert _stream(state, list(answer)) == "xc@example.comb@example.com < <EMAIL_1"


def test_stream_restorer_holds_back_only_a_possible_placeholder(scanner: PiiScanner) -> None:
    state = Redaction(scanner)
    redact("jane@example.com", state)
    restorer = StreamRestorer(state)
    assert restorer.feed("a < b and <EM") == "a < b and "
    assert restorer.feed("AIL_1> done <") == "jane@example.com done "
    assert restorer.feed("div>") == "<div>"
    assert restorer.feed("x <EMAIL_2") == "x <EMAIL_2"  # not a placeholder of this request
    assert restorer.flush() == ""


def test_stream_restorer_with_no_redactions_passes_through(scanner: PiiScanner) -> None:
    restorer = StreamRestorer(Redaction(scanner))
    assert restorer.feed("<EMAIL_") == "<EMAIL_"
    assert restorer.flush() == ""


def test_may_begin_agrees_with_every_placeholder_and_does_not_read_them(
    scanner: PiiScanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`may_begin` (a stream's tail `<…` held back) answers as a scan of every placeholder would, without one:
    every tail `_PARTIAL_RE` can match, over a map with numbers past 9 and 99 and entity names with underscores;
    and with 5,000 placeholders a tail's answer does not build their tuple (a request may hold 10,000, and a
    stream's every chunk may end in `<`)."""
    state = Redaction(scanner)
    for i in range(120):
        state.placeholder("EMAIL", f"user{i}@example.com")
    for i in range(12):
        state.placeholder("US_SSN", f"123-45-{6700 + i}")
    state.placeholder("PHONE", "+44 20 7946 0958")
    letters = ["", "E", "EM", "EMAIL", "EMAIL_", "EMAILS_", "U", "US", "US_", "US_S", "US_SSN", "US_SSN_", "P",
               "PHONE_", "_", "IBAN_", "CREDIT_CARD_", "X_"]  # fmt: skip
    digits = ["", "0", "01", "1", "9", "12", "13", "99", "119", "120", "121", "999", "1000", "123456"]
    for head in letters:
        for tail in digits:
            text = f"<{head}{tail}"
            expected = any(p.startswith(text) for p in state.placeholders)
            assert state.may_begin(text) is expected, text
    many = Redaction(scanner)
    for i in range(5000):
        many.placeholder("EMAIL", f"u{i}@example.com")
    restorer = StreamRestorer(many)
    monkeypatch.setattr(Redaction, "placeholders", property(lambda _: pytest.fail("read every placeholder")))
    assert restorer.feed("see <EMAIL_49") == "see "
    assert restorer.feed("99> and <EMAIL_5001") == "u4998@example.com and <EMAIL_5001"
