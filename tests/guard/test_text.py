from __future__ import annotations

from margin.guard.text import context_before, long_chunks


def test_long_chunks_offsets() -> None:
    text = "short  averyveryverylongtoken x anotherlongtokenhere\tend"
    assert [text[s:e] for s, e in long_chunks(text, 12)] == ["averyveryverylongtoken", "anotherlongtokenhere"]
    assert list(long_chunks("a b c", 2)) == []
    assert list(long_chunks("", 1)) == []


def test_long_chunks_repeated_chunk_gets_its_own_offset() -> None:
    text = "tokentokentoken tokentokentoken"
    assert list(long_chunks(text, 10)) == [(0, 15), (16, 31)]


def test_context_before_clamps_at_start() -> None:
    assert context_before("abcdef", 4, 10) == "abcd"
    assert context_before("abcdef", 4, 2) == "cd"
