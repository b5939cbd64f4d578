"""Linear time and caps: overlap resolution matches the quadratic definition, caps stop the dear work."""

from __future__ import annotations

import random

import pytest

from margin.api.errors import status_of
from margin.guard import PiiScanner, Redaction, redact
from margin.guard.limits import ScanBudget, ScanLimitExceeded, ScanLimits
from margin.guard.phones import find_phones
from margin.guard.secrets import find_secrets
from margin.guard.spans import Span, resolve_overlaps


def quadratic_resolve(spans: list[Span]) -> list[Span]:
    """The definition: best score first, then longer, then earlier; keep what overlaps nothing kept."""
    ranked = sorted(spans, key=lambda s: (-s.score, -(s.end - s.start), s.start))
    kept: list[Span] = []
    for span in ranked:
        if not any(span.overlaps(k) for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


@pytest.mark.parametrize("seed", range(30))
def test_sweep_resolution_equals_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    spans = []
    for _ in range(rng.randint(0, 60)):
        start = rng.randint(0, 200)
        end = start + rng.randint(1, 30)
        spans.append(Span("X", start, end, "x" * (end - start), rng.choice([0.5, 0.6, 0.7, 0.9, 0.95])))
    assert resolve_overlaps(spans) == quadratic_resolve(spans)


def test_many_spans_resolve_without_pairwise_checks() -> None:
    spans = [Span("EMAIL", i * 10, i * 10 + 8, "x" * 8, 0.95) for i in range(50_000)]
    spans += [Span("PHONE", i * 10 + 4, i * 10 + 12, "x" * 8, 0.7) for i in range(50_000)]
    kept = resolve_overlaps(spans)
    assert len(kept) == 50_000 and all(s.entity == "EMAIL" for s in kept)


def test_pem_headers_are_matched_to_their_own_footer() -> None:
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----"
    text = f"first {key} then -----BEGIN PRIVATE KEY----- alone, and {key}"
    spans = [s for s in find_secrets(text) if s.text.startswith("-----BEGIN")]
    assert [s.text for s in spans] == [key, "-----BEGIN PRIVATE KEY-----", key]
    flood = "-----BEGIN PRIVATE KEY-----\n" * 5_000  # each header alone: the footer search stops at the next one
    assert sum(1 for s in find_secrets(flood) if s.text.startswith("-----BEGIN")) == 5_000


def test_phone_checks_are_counted_and_repeats_are_free() -> None:
    budget = ScanBudget(ScanLimits(max_phone_checks=3))
    repeated = "call +44 20 7946 0958, " * 50
    assert len(list(find_phones(repeated, budget=budget))) == 50
    assert budget.phone_checks == 1
    distinct = " ".join(f"call +44 20 7946 {1000 + i}," for i in range(10))
    with pytest.raises(ScanLimitExceeded) as caught:
        list(find_phones(distinct, budget=budget))
    assert status_of(caught.value) == 413 and caught.value.code == "guard_scan_limit"


def test_span_and_char_caps() -> None:
    scanner = PiiScanner(ner=False)
    state = Redaction(scanner, ScanBudget(ScanLimits(max_spans=5)))
    assert redact("a@example.org b@example.org", state) == "<EMAIL_1> <EMAIL_2>"
    with pytest.raises(ScanLimitExceeded, match="max_spans"):
        redact(" ".join(f"u{i}@example.org" for i in range(4)), state)
    chars = ScanBudget(ScanLimits(max_chars=10))
    chars.take_chars(10)
    with pytest.raises(ScanLimitExceeded, match="max_scan_chars"):
        chars.take_chars(1)


def test_scan_cost_counts_digit_runs_only_for_small_texts() -> None:
    from margin.guard.inspection import NUMBER_CHECK_COST, scan_cost

    assert scan_cost([("user", "hello there")], 2048) == 11
    two_numbers = "call +44 20 7946 0958 or 030 1234567"
    assert scan_cost([("user", two_numbers)], 2048) == len(two_numbers) + 2 * NUMBER_CHECK_COST
    big = "1234567 " * 1000
    assert scan_cost([("user", big)], 2048) == len(big)  # already off the loop by size: not counted


async def test_costly_scans_leave_the_event_loop() -> None:
    import threading

    from margin.guard import InjectionDetector
    from margin.pipeline.steps.guard import Guard

    stage = Guard(PiiScanner(ner=False), InjectionDetector(), ScanLimits(inline_chars=100))
    try:
        assert await stage._run(100, lambda: threading.current_thread().name) == threading.current_thread().name
        assert (await stage._run(101, lambda: threading.current_thread().name)).startswith("margin-guard")
    finally:
        stage.close()


async def test_the_scan_queue_is_bounded_for_requests_never_for_answers() -> None:
    """With `max_queued` scans waiting for (or on) the worker thread, a request's scan is refused with 503
    `guard_busy` before its backend call; an answer's scan still queues (its backend already worked)."""
    import asyncio
    import threading

    from margin.errors import Overloaded
    from margin.guard import InjectionDetector
    from margin.pipeline.steps.guard import Guard

    stage = Guard(PiiScanner(ner=False), InjectionDetector(), ScanLimits(inline_chars=10, max_queued=2))
    release = threading.Event()
    try:
        held = [asyncio.ensure_future(stage._run(11, lambda: release.wait(10), refusable=True)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:
            await stage._run(11, lambda: True, refusable=True)
        assert refused.value.code == "guard_busy" and refused.value.headers == {"retry-after": "1"}
        assert await stage._run(10, lambda: "inline", refusable=True) == "inline"  # small scans never queue
        answer = asyncio.ensure_future(stage._run(11, lambda: "answer"))
        release.set()
        assert await asyncio.gather(*held, answer) == [True, True, "answer"]
        assert await stage._run(11, lambda: "free again", refusable=True) == "free again"
    finally:
        release.set()
        stage.close()
