"""How much one request may make the guard read: characters, spans and phone number-plan checks.

Every recognizer runs in time linear in its input, but the constant differs a thousandfold (a regex pass is
nanoseconds per character, a `phonenumbers` validation ~0.1-0.5 ms per candidate), so the work per request is
capped on all three counts. `ScanBudget` is the per-request meter; crossing a cap raises `ScanLimitExceeded`
(413 `guard_scan_limit`), which the guard step turns into a refusal when the policy needs every string
inspected (redact, block) and into a recorded `scan_limit` when it only logs.

`max_spans` bounds the work of finding values, not only their number: what the recognizers report is counted as
they report it (`take_candidate`, `check_spans`, driven by `PiiScanner.scan`), so a text dense with values stops
being read shortly after the cap instead of being read to its end first."""

from __future__ import annotations

from dataclasses import dataclass, replace

from margin.errors import PayloadTooLarge


class ScanLimitExceeded(PayloadTooLarge):
    default_code = "guard_scan_limit"


@dataclass(frozen=True, slots=True)
class ScanLimits:
    max_chars: int = 1_048_576
    """Characters of text one request may ask the guard to read (request and answer are counted apart)."""
    max_spans: int = 10_000
    """Detected entities one request may hold. Also bounds the recognizers' work: at most
    `CANDIDATES_PER_SPAN` × this many readings (candidate spans before overlaps are resolved) per request."""
    max_phone_checks: int = 2_000
    """Phone candidates validated against number plans (the dearest check) per request."""
    inline_chars: int = 2_048
    """Texts up to this size are scanned on the event loop (well under a millisecond); larger ones on the
    guard's worker thread."""
    max_queued: int = 16
    """Requests whose scans may wait for (or run on) the worker thread at once; more are refused."""


CANDIDATES_PER_SPAN = 4
"""Readings allowed per value of `max_spans`. One value is reported by at most three recognizers (`api_key=sk-…`:
the credential value, the vendor key and the random token; a URL password also read as an e-mail's local part; an
IPv4-mapped IPv6 address also read as IPv4); the lines of a PEM key's body are not reported apart from it."""


CHARS_PER_RULE_ATTEMPT = 32
"""Characters of `max_chars` per attempt of an anchored injection rule (`margin.guard.injection._anchored`: a match
tried where a rule's first word starts) a request may make: 32,768 for the default 1 MiB. Prose holds such a word
every few hundred characters; a text made of them ("ignore ignore ...", each tried in two readings) stops there
instead of costing up to ~10 µs an attempt for the whole megabyte."""


class ScanBudget:
    """The guard's work meter for one request (one for its input, one for its answer). Not thread-safe: a
    request is scanned by one thread at a time."""

    def __init__(self, limits: ScanLimits) -> None:
        self.limits = limits
        self.chars = 0
        self.spans = 0
        self.phone_checks = 0
        self.candidates = 0
        self.rule_attempts = 0

    def take_chars(self, n: int) -> None:
        self.chars += n
        if self.chars > self.limits.max_chars:
            raise ScanLimitExceeded(
                f"the request holds more than {self.limits.max_chars} characters of text for the guard to inspect"
                " (guard.max_scan_chars)"
            )

    def take_growth(self, n: int) -> None:
        """Characters that normalizing a text for the injection rules adds to it (NFKC: up to 18 per one)."""
        if n > 0 and self.chars + n > self.limits.max_chars:
            raise ScanLimitExceeded(
                f"the request's text grows past {self.limits.max_chars} characters when normalized for the"
                " injection rules (compatibility forms such as U+FDFA expand up to 18-fold) (guard.max_scan_chars)"
            )
        self.chars += max(n, 0)

    def take_spans(self, n: int) -> None:
        """Values kept (after overlaps are resolved) in a text: they are the request's for good."""
        self.spans += n
        self.check_spans(0)

    def check_spans(self, pending: int) -> None:
        """`pending` values found so far in the text being scanned, on top of those the request holds already."""
        if self.spans + pending > self.limits.max_spans:
            raise ScanLimitExceeded(
                f"the request holds more than {self.limits.max_spans} sensitive values (guard.max_spans)"
            )

    def take_candidate(self) -> None:
        """One reading reported by a recognizer, kept or not once overlaps are resolved: the work of finding
        values is bounded by `max_spans` whatever their overlaps."""
        self.candidates += 1
        if self.candidates > CANDIDATES_PER_SPAN * self.limits.max_spans:
            raise ScanLimitExceeded(
                f"the request's text makes the guard read more than {CANDIDATES_PER_SPAN * self.limits.max_spans}"
                f" overlapping candidate values ({CANDIDATES_PER_SPAN} per value of guard.max_spans)"
            )

    def take_rule_attempt(self) -> None:
        """One match attempt of an anchored injection rule (`CHARS_PER_RULE_ATTEMPT`)."""
        self.rule_attempts += 1
        if self.rule_attempts > self.limits.max_chars // CHARS_PER_RULE_ATTEMPT:
            raise ScanLimitExceeded(
                f"the request's text makes the injection rules try more than"
                f" {self.limits.max_chars // CHARS_PER_RULE_ATTEMPT} matches where their first words start"
                f" (one per {CHARS_PER_RULE_ATTEMPT} characters of guard.max_scan_chars)"
            )

    def window(self, reread: int) -> ScanBudget:
        """A budget for scanning one window of a stream whose windows overlap (context and held tail are read
        again): what is left of the request's caps on values (plus `reread`, the most values of the text read
        before that it may count again) and phone checks, with its own count of readings, so reading the same
        characters again does not use up the request's. It bounds the scan's work; the values the window releases
        are the request's (`take_spans`), and `settle` takes back the phone checks it made."""
        left = replace(
            self.limits,
            max_spans=max(self.limits.max_spans - self.spans, 0) + reread,
            max_phone_checks=max(self.limits.max_phone_checks - self.phone_checks, 0),
        )
        return ScanBudget(left)

    def settle(self, window: ScanBudget) -> None:
        self.phone_checks += window.phone_checks

    def take_phone_check(self) -> None:
        self.phone_checks += 1
        if self.phone_checks > self.limits.max_phone_checks:
            raise ScanLimitExceeded(
                f"the request holds more than {self.limits.max_phone_checks} phone-number candidates"
                " (guard.max_phone_checks)"
            )
