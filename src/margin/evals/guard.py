"""`margin eval guard`: recall/precision of the PII scanner and TPR/FPR of the injection heuristics.

Matching rule: a predicted span is correct when a gold span of the same entity overlaps it by at least one
character; a gold span is found when such a prediction exists. Recall = found gold / gold, precision =
correct predictions / predictions, both per entity. Overlap (not exact offsets) is used because the
boundary conventions differ harmlessly: `tel. +44 …` vs `+44 …`, a PEM header vs the whole block.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from margin.guard.injection import InjectionDetector
from margin.guard.pii import PiiScanner
from margin.guard.spans import STRUCTURED_ENTITIES, Span

if TYPE_CHECKING:  # the generators need Faker; scoring does not
    from margin.guard.evalset import Sample
    from margin.guard.evalset_injection import InjectionSample

RECALL_TARGET = 0.98
PRECISION_TARGET = 0.95


@dataclass
class EntityScore:
    """Counts for one entity; recall/precision are 1.0 when there is nothing to count (tiny `--n`)."""

    entity: str
    support: int = 0
    predicted: int = 0
    found: int = 0
    correct: int = 0

    @property
    def recall(self) -> float:
        return self.found / self.support if self.support else 1.0

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0

    @property
    def meets_target(self) -> bool:
        return self.recall >= RECALL_TARGET and self.precision >= PRECISION_TARGET


@dataclass
class PiiErrors:
    """Every miss and false alarm as (entity, text), for debugging the recognizers on the synthetic set."""

    missed: list[tuple[str, str]] = field(default_factory=list)
    false_alarms: list[tuple[str, str]] = field(default_factory=list)


def score_pii(samples: Sequence[Sample], predictions: Sequence[list[Span]]) -> tuple[dict[str, EntityScore], PiiErrors]:
    """Per-entity counts under the overlap matching rule."""
    scores = {e: EntityScore(e) for e in STRUCTURED_ENTITIES}
    errors = PiiErrors()
    for sample, predicted in zip(samples, predictions, strict=True):
        for gold in sample.spans:
            score = scores[gold.entity]
            score.support += 1
            if any(p.entity == gold.entity and p.start < gold.end and gold.start < p.end for p in predicted):
                score.found += 1
            else:
                errors.missed.append((gold.entity, sample.text[gold.start : gold.end]))
        for p in predicted:
            if p.entity not in scores:
                continue
            score = scores[p.entity]
            score.predicted += 1
            if any(g.entity == p.entity and g.start < p.end and p.start < g.end for g in sample.spans):
                score.correct += 1
            else:
                errors.false_alarms.append((p.entity, p.text))
    return scores, errors


@dataclass(frozen=True)
class InjectionScore:
    positives: int
    negatives: int
    true_positives: int
    false_positives: int
    by_family: dict[str, tuple[int, int]] = field(default_factory=dict)
    """family → (flagged, total); for benign families `flagged` counts false alarms."""

    @property
    def tpr(self) -> float:
        return self.true_positives / self.positives if self.positives else 0.0

    @property
    def fpr(self) -> float:
        return self.false_positives / self.negatives if self.negatives else 0.0


def score_injection(samples: Sequence[InjectionSample], detector: InjectionDetector) -> InjectionScore:
    counts: dict[str, list[int]] = {}
    tp = fp = positives = 0
    for sample in samples:
        flagged = detector.assess(sample.text).flagged
        family = counts.setdefault(sample.family, [0, 0])
        family[0] += flagged
        family[1] += 1
        positives += sample.label
        tp += flagged and sample.label
        fp += flagged and not sample.label
    by_family = {name: (c[0], c[1]) for name, c in sorted(counts.items())}
    return InjectionScore(positives, len(samples) - positives, tp, fp, by_family)


@dataclass(frozen=True)
class Throughput:
    texts_per_s: float
    us_per_kb: float


def measure_throughput(texts: Sequence[str], scan: PiiScanner) -> Throughput:
    """Scan every text once (after one warm-up scan) and report rate and cost per 1,000 characters."""
    if texts:
        scan.scan(texts[0])
    start = time.perf_counter()
    for text in texts:
        scan.scan(text)
    elapsed = max(time.perf_counter() - start, 1e-9)
    chars = max(sum(len(t) for t in texts), 1)
    return Throughput(len(texts) / elapsed, elapsed * 1e6 / (chars / 1000))


_PROSE = (
    "Hi team, following up on yesterday's call about the onboarding flow. The new checklist looks good, but "
    "customers still get stuck on the second screen where we ask them to confirm their workspace settings. "
    "Could we move the optional fields behind an 'advanced' toggle and shorten the copy? Also, the release "
    "notes for version 4.2 mention the export fix, yet support saw three tickets about CSV encoding this "
    "week, so please double-check that the fix actually shipped. "
)


def typical_messages() -> dict[str, str]:
    """A short chat turn and ~1 KB messages without and with PII, for the latency figures in reports."""
    clean = (_PROSE * 3)[:1000]
    with_pii = clean[:400] + " Reach me at jane.doe@example.com or +44 20 7946 0958. " + clean[400:945]
    return {
        "short_clean": "Can you summarize this article in three bullet points?",
        "1kb_clean": clean,
        "1kb_pii": with_pii,
    }


def message_latency_us(scanner: PiiScanner, detector: InjectionDetector, repeats: int = 200) -> dict[str, float]:
    """Mean microseconds per PII `scan` and per injection `check` of each typical message (after a warm-up)."""
    out: dict[str, float] = {}
    for name, text in typical_messages().items():
        for kind, call in (("pii", scanner.scan), ("injection", detector.check)):
            call(text)
            start = time.perf_counter()
            for _ in range(repeats):
                call(text)
            out[f"{kind}:{name}"] = round((time.perf_counter() - start) * 1e6 / repeats, 1)
    return out


@dataclass
class GuardReport:
    entities: dict[str, EntityScore]
    injection: InjectionScore
    throughput: Throughput
    latency_us: dict[str, float]
    n: int
    seed: int

    @property
    def passed(self) -> bool:
        return all(s.meets_target for s in self.entities.values())

    def to_json(self) -> dict[str, object]:
        injection = self.injection
        return {
            "n": self.n,
            "seed": self.seed,
            "matching": "overlap, same entity",
            "targets": {"recall": RECALL_TARGET, "precision": PRECISION_TARGET},
            "passed": self.passed,
            "entities": {
                e: {**asdict(s), "recall": round(s.recall, 4), "precision": round(s.precision, 4)}
                for e, s in self.entities.items()
            },
            "injection": {
                "positives": injection.positives,
                "negatives": injection.negatives,
                "tpr": round(injection.tpr, 4),
                "fpr": round(injection.fpr, 4),
                "by_family": {k: {"flagged": f, "total": t} for k, (f, t) in injection.by_family.items()},
            },
            "throughput": {k: round(v, 2) for k, v in asdict(self.throughput).items()},
            "latency_us": self.latency_us,
        }


def run_guard_eval(n: int = 1000, seed: int = 7, *, latency_repeats: int = 200) -> tuple[GuardReport, PiiErrors]:
    """Generate both sets, score them, and time the scanner on the PII texts and typical messages."""
    from margin.guard.evalset import generate_pii
    from margin.guard.evalset_injection import generate_injection

    samples = generate_pii(n, seed)
    scanner = PiiScanner(ner=False)
    predictions = [scanner.scan(s.text) for s in samples]
    entities, errors = score_pii(samples, predictions)
    detector = InjectionDetector()
    injection = score_injection(generate_injection(seed), detector)
    throughput = measure_throughput([s.text for s in samples], scanner)
    latency = message_latency_us(scanner, detector, latency_repeats)
    return GuardReport(entities, injection, throughput, latency, n, seed), errors
