"""Optional PERSON and LOCATION detection with a spaCy pipeline, when spaCy and a model package are installed.

Nothing is downloaded: the model must already be an installed package (e.g. `en_core_web_sm`). When it is
not, `load_ner` returns no finder and a status line saying why; callers report that, they do not fail.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from margin.guard.spans import LOCATION, PERSON, Span

DEFAULT_NER_MODEL = "en_core_web_sm"
_LABELS: tuple[tuple[str, str], ...] = (("PERSON", PERSON), ("GPE", LOCATION), ("LOC", LOCATION), ("FAC", LOCATION))

NerFinder = Callable[[str], list[Span]]


def spans_from_doc(doc: Any) -> list[Span]:
    """Map a spaCy `Doc`'s entities onto our entity names; other labels are ignored."""
    labels = dict(_LABELS)
    spans: list[Span] = []
    for ent in doc.ents:
        entity = labels.get(str(ent.label_))
        if entity is not None:
            spans.append(Span(entity, int(ent.start_char), int(ent.end_char), str(ent.text), 0.5))
    return spans


def load_ner(model: str = DEFAULT_NER_MODEL) -> tuple[NerFinder | None, str]:
    """Load the named spaCy model package (parser and lemmatizer disabled); return (finder, status)."""
    try:
        package = importlib.import_module(model)
    except ImportError:
        return None, f"NER unavailable: model package {model!r} is not installed"
    try:
        nlp = package.load(disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
    except Exception as exc:  # a broken or incompatible model must not take the gateway down
        return None, f"NER unavailable: loading {model!r} failed ({type(exc).__name__}: {exc})"

    def find(text: str) -> list[Span]:
        return spans_from_doc(nlp(text))

    return find, f"NER enabled: {model}"
