from __future__ import annotations

from margin.guard.normalize import normalize


def test_ascii_is_lowercased_with_identity_offsets() -> None:
    n = normalize("Hello World")
    assert n.text == "hello world"
    assert n.original_span(6, 11) == (6, 11)


def test_invisible_characters_dropped_and_offsets_kept() -> None:
    text = "a\u200bb\ufeffc"
    n = normalize(text)
    assert n.text == "abc"
    assert n.original_span(1, 3) == (2, 5)


def test_homoglyphs_and_fullwidth_fold_to_latin() -> None:
    assert normalize("Ѕуѕtеm").text == "system"
    assert normalize("ＳＹＳＴＥＭ").text == "system"


def test_empty() -> None:
    n = normalize("")
    assert n.text == ""
    assert n.original_span(0, 0) == (0, 0)
