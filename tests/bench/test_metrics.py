"""The metric code on synthetic timestamps, against answers computed by hand (vLLM's definitions)."""

from __future__ import annotations

import pytest

from margin.bench.metrics import busy_seconds, is_good, parse_slos, stats_ms, summarize
from margin.bench.records import RequestRecord
from margin.errors import InvalidRequest


def rec(
    index: int,
    sent: float,
    chunks: list[float],
    end: float | None,
    out: int | None = None,
    ok: bool = True,
    inp: int | None = 10,
) -> RequestRecord:
    r = RequestRecord(index, sent, chunk_s=chunks, end_s=end, ok=ok, input_tokens=inp)
    r.output_tokens = len(chunks) if out is None else out
    r.tokens_source = "usage" if out is not None else "chunks"
    return r


def test_ttft_tpot_itl_e2el_by_hand() -> None:
    # sent at 1.0; text chunks at 1.2, 1.3, 1.5, 1.6; stream ends (usage chunk) at 1.65; 4 tokens
    r = rec(0, 1.0, [1.2, 1.3, 1.5, 1.6], 1.65, out=4)
    assert r.ttft_s == pytest.approx(0.2)
    assert r.e2el_s == pytest.approx(0.65)
    assert r.tpot_s == pytest.approx((0.65 - 0.2) / 3)  # 0.15
    assert r.itl_s == pytest.approx([0.1, 0.2, 0.1])


def test_tpot_undefined_with_one_output_token_but_meets_a_tpot_slo() -> None:
    r = rec(0, 0.0, [0.3], 0.31, out=1)
    assert r.tpot_s is None
    assert r.itl_s == []
    assert is_good(r, {"tpot": 1.0})  # vLLM: a 1-token answer's TPOT counts as 0 for goodput
    m = summarize([r], 1.0, {"tpot": 1.0})
    assert m["tpot_ms"]["mean"] is None  # excluded from TPOT statistics
    assert m["ttft_ms"]["p50"] == pytest.approx(300.0)
    assert m["goodput"] == 1.0


def test_several_tokens_in_one_chunk_tpot_uses_token_count() -> None:
    # 2 chunks carrying 6 tokens in all (server usage): TPOT divides by 5, ITL has one gap
    r = rec(0, 0.0, [0.1, 0.6], 0.6, out=6)
    assert r.tpot_s == pytest.approx(0.5 / 5)
    assert r.itl_s == pytest.approx([0.5])


def test_summary_pools_itl_and_counts_failures() -> None:
    a = rec(0, 0.0, [0.1, 0.2, 0.4], 0.4, out=3)  # ttft 100, tpot 150, e2el 400, itl 100, 200
    b = rec(1, 0.5, [0.8, 0.9], 1.0, out=2)  # ttft 300, tpot 200, e2el 500, itl 100
    failed = rec(2, 0.6, [], 0.7, ok=False)
    failed.error = "502"
    m = summarize([a, b, failed], 2.0, {})
    assert (m["requests"], m["completed"], m["failed"]) == (3, 2, 1)
    assert m["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert m["ttft_ms"]["p50"] == pytest.approx(200.0)  # linear interpolation between 100 and 300
    assert m["ttft_ms"]["p99"] == pytest.approx(100 + 0.99 * 200)
    assert m["tpot_ms"]["mean"] == pytest.approx(175.0)
    assert m["itl_ms"]["mean"] == pytest.approx(400 / 3)
    assert m["itl_ms"]["max"] == pytest.approx(200.0)
    assert m["e2el_ms"]["mean"] == pytest.approx(450.0)
    assert m["request_throughput"] == pytest.approx(1.0)  # 2 completed / 2 s
    assert m["output_throughput"] == pytest.approx(2.5)  # 5 tokens / 2 s
    assert m["total_token_throughput"] == pytest.approx(12.5)  # (20 + 5) / 2 s; the failed one counts nothing
    assert m["goodput"] is None  # no SLO given


def test_goodput_excludes_failed_and_slow_requests() -> None:
    fast = rec(0, 0.0, [0.05, 0.06, 0.07], 0.07, out=3)  # ttft 50, tpot 10, e2el 70
    slow_first = rec(1, 0.0, [0.6, 0.61], 0.61, out=2)  # ttft 600
    slow_decode = rec(2, 0.0, [0.05, 0.5], 0.5, out=2)  # tpot 450
    failed = rec(3, 0.0, [0.01, 0.02], 0.02, out=2, ok=False)  # fast but failed
    records = [fast, slow_first, slow_decode, failed]
    slos = parse_slos(["ttft=500", "tpot=100"])
    assert [is_good(r, slos) for r in records] == [True, False, False, False]
    m = summarize(records, 4.0, slos)
    assert m["good_requests"] == 1
    assert m["goodput"] == pytest.approx(0.25)
    assert summarize(records, 4.0, {"e2el": 100})["good_requests"] == 1


def test_completed_answer_without_text_has_no_ttft_and_fails_a_ttft_slo() -> None:
    # only empty chunks (role header, finish, usage) arrived: no text chunk, 0 tokens
    empty = rec(0, 0.0, [], 0.2, out=0)
    assert empty.ttft_s is None and empty.tpot_s is None
    assert not is_good(empty, {"ttft": 10_000})
    assert is_good(empty, {"e2el": 1000})
    m = summarize([empty], 1.0, {"ttft": 10_000})
    assert m["completed"] == 1 and m["ttft_ms"]["p50"] is None and m["goodput"] == 0.0


def test_stats_and_busy_time() -> None:
    s = stats_ms([0.001, 0.002, 0.003, 0.004])
    assert (s["mean"], s["min"], s["max"], s["p50"]) == pytest.approx((2.5, 1.0, 4.0, 2.5))
    assert s["p90"] == pytest.approx(3.7)
    assert stats_ms([])["p99"] is None
    spans = [rec(0, 0.0, [], 1.0), rec(1, 0.5, [], 1.5), rec(2, 3.0, [], 4.0)]
    assert busy_seconds(spans) == pytest.approx(2.5)  # [0, 1.5] ∪ [3, 4]
    m = summarize(spans, 5.0, {})
    assert m["busy_fraction"] == pytest.approx(0.5)
    assert m["mean_in_flight"] == pytest.approx(3.0 / 5.0)


def test_bad_slo_rejected() -> None:
    with pytest.raises(InvalidRequest):
        parse_slos(["latency=5"])
    with pytest.raises(InvalidRequest):
        parse_slos(["ttft"])
