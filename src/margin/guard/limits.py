"""How much one request may make the guard read: characters, spans and phone number-plan checks.

Every recognizer runs in time linear in its input, but the constant differs a thousandfold (a regex pass is
nanoseconds per character, a `phonenumbers` validation ~0.1-0.5 ms per candidate), so the work per request is
capped on all three counts. `ScanBudget` is the per-request meter; crossing a cap raises `ScanLimitExceeded`
(413 `guard_scan_limit`), which the guard step turns into a refusal when the policy needs every string
inspected (redact, block) and into a recorded `scan_limit` when it only logs."""

from __future__ import annotations

from dataclasses import dataclass

from margin.errors import PayloadTooLarge


class ScanLimitExceeded(PayloadTooLarge):
    default_code = "guard_scan_limit"


@dataclass(frozen=True, slots=True)
class ScanLimits:
    max_chars: int = 1_048_576
    """Characters of text one request may ask the guard to read (request and answer are counted apart)."""
    max_spans: int = 10_000
    """Detected entities one request may hold."""
    max_phone_checks: int = 2_000
    """Phone candidates validated against number plans (the dearest check) per request."""
    inline_chars: int = 2_048
    """Texts up to this size are scanned on the event loop (well under a millisecond); larger ones on the
    guard's worker thread."""
    max_queued: int = 16
    """Requests whose scans may wait for (or run on) the worker thread at once; more are refused."""


class ScanBudget:
    """The guard's work meter for one request (one for its input, one for its answer). Not thread-safe: a
    request is scanned by one thread at a time."""

    def __init__(self, limits: ScanLimits) -> None:
        self.limits = limits
        self.chars = 0
        self.spans = 0
        self.phone_checks = 0

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
        self.spans += n
        if self.spans > self.limits.max_spans:
            raise ScanLimitExceeded(
                f"the request holds more than {self.limits.max_spans} sensitive values (guard.max_spans)"
            )

    def take_phone_check(self) -> None:
        self.phone_checks += 1
        if self.phone_checks > self.limits.max_phone_checks:
            raise ScanLimitExceeded(
                f"the request holds more than {self.limits.max_phone_checks} phone-number candidates"
                " (guard.max_phone_checks)"
            )
