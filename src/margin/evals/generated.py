"""`builtin:smol-basics`: generated tasks with exact answers, sized for a 135M model.

Made by `smol_basics(seed)` with Python's `random.Random(seed)` (the same seed gives the same items on
every machine), 100 items in six families. On SmolLM2-135M Q4_1 (greedy, 16 tokens) a probe of these
families gave: single-digit addition ~75%, successor ~60%, next letter ~75%, well-known capitals ~100%,
two-digit addition ~0%, so the mix lands near the middle where quantization differences show. Answers
are read leniently (a number anywhere / the last number, a capital letter standing alone, the city
anywhere), because a small chat model wraps its answer in a sentence.
"""

from __future__ import annotations

import random

from margin.evals.graders import GraderSpec
from margin.evals.suites import Item

CAPITALS = (
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Portugal", "Lisbon"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Turkey", "Ankara"),
    ("Vietnam", "Hanoi"),
    ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"),
    ("Pakistan", "Islamabad"),
    ("Switzerland", "Bern"),
    ("New Zealand", "Wellington"),
    ("Brazil", "Brasilia"),
    ("Colombia", "Bogota"),
    ("Finland", "Helsinki"),
    ("Ireland", "Dublin"),
    ("Thailand", "Bangkok"),
)
NUMBER_LAST = GraderSpec(kind="numeric", pick="last")
SUFFIX = " Answer with just the {what}."


def _user(text: str, what: str) -> str:
    return text + SUFFIX.format(what=what)


def _arithmetic(rng: random.Random, n: int, low: int, high: int, family: str) -> list[Item]:
    items = []
    for i in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        if family == "sub1":
            a, b = max(a, b), min(a, b)
            question, answer = f"What is {a} - {b}?", a - b
        else:
            question, answer = f"What is {a} + {b}?", a + b
        items.append(
            Item(
                id=f"{family}-{i:02d}",
                prompt=_user(question, "number"),
                expected=answer,
                grader=NUMBER_LAST,
                tags={"family": family},
            )
        )
    return items


def _successor(rng: random.Random, n: int) -> list[Item]:
    items = []
    for i in range(n):
        k = rng.randint(2, 60)
        items.append(
            Item(
                id=f"succ-{i:02d}",
                prompt=_user(f"What number comes right after {k}?", "number"),
                expected=k + 1,
                grader=NUMBER_LAST,
                tags={"family": "succ"},
            )
        )
    return items


def _next_letter(rng: random.Random, n: int) -> list[Item]:
    items = []
    for i, letter in enumerate(rng.sample("BCDEFGHIJKLMNOPQRSTUVWX", n)):
        after = chr(ord(letter) + 1)
        items.append(
            Item(
                id=f"letter-{i:02d}",
                prompt=_user(f"Which letter of the alphabet comes right after {letter}?", "letter"),
                expected=after,
                grader=GraderSpec(kind="regex", pattern=rf"(?<![A-Za-z]){after}(?![A-Za-z])"),
                tags={"family": "letter"},
            )
        )
    return items


def _capitals(rng: random.Random, n: int) -> list[Item]:
    return [
        Item(
            id=f"capital-{i:02d}",
            prompt=_user(f"What is the capital of {country}?", "city"),
            expected=city,
            grader=GraderSpec(kind="contains", ignore_case=True),
            tags={"family": "capital"},
        )
        for i, (country, city) in enumerate(rng.sample(CAPITALS, n))
    ]


def smol_basics(seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    return [
        *_arithmetic(rng, 20, 1, 9, "add1"),
        *_arithmetic(rng, 15, 1, 9, "sub1"),
        *_arithmetic(rng, 15, 10, 49, "add2"),
        *_successor(rng, 15),
        *_next_letter(rng, 15),
        *_capitals(rng, 20),
    ]
