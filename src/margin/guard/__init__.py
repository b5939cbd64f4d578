"""Guardrails: PII and secret detection with reversible redaction, and prompt-injection heuristics.

Pipeline use, per request::

    scanner = PiiScanner()                    # once per process
    state = Redaction(scanner)                # once per request
    safe = redact(user_text, state)           # every message of the request, same state
    answer = restore(model_text, state)       # or StreamRestorer(state).feed(chunk) / .flush()
    state.counts()                            # {"EMAIL": 2, ...}: for the ledger, never values

    InjectionDetector().assess(user_text)     # InjectionVerdict(findings, score, flagged)
"""

from margin.guard.injection import Finding, InjectionDetector, InjectionVerdict, combined_score
from margin.guard.pii import PiiScanner
from margin.guard.redaction import Redaction, StreamRestorer, redact, restore
from margin.guard.spans import ALL_ENTITIES, NER_ENTITIES, STRUCTURED_ENTITIES, Span, count_entities

__all__ = [
    "ALL_ENTITIES",
    "NER_ENTITIES",
    "STRUCTURED_ENTITIES",
    "Finding",
    "InjectionDetector",
    "InjectionVerdict",
    "PiiScanner",
    "Redaction",
    "Span",
    "StreamRestorer",
    "combined_score",
    "count_entities",
    "redact",
    "restore",
]
