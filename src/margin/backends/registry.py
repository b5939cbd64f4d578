"""Backend kinds by name. Built-ins register through the same call a plugin would; imports are lazy."""

from __future__ import annotations

import importlib
from typing import Any

from margin.errors import ConfigError
from margin.types import Backend

BUILTIN_KINDS: dict[str, str] = {
    "llamacpp": "margin.backends.llamacpp:LlamaCppBackend",
    "openai": "margin.backends.openai_compat:openai_backend",
    "anthropic": "margin.backends.anthropic:AnthropicBackend",
    "fake": "margin.backends.fake:FakeBackend",
    "sentence_transformers": "margin.backends.embeddings:SentenceTransformersBackend",
}


class BackendRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, str] = {}
        for kind, target in BUILTIN_KINDS.items():
            self.register(kind, target)

    def register(self, kind: str, target: str) -> None:
        """Register `kind` as "package.module:Class" (or a function that makes one); it takes (name, config,
        services)."""
        if ":" not in target:
            raise ConfigError(f"backend target {target!r} must look like 'package.module:Class'")
        self._kinds[kind] = target

    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def create(self, name: str, config: Any, services: Any) -> Backend:
        target = self._kinds.get(config.kind)
        if target is None:
            raise ConfigError(f"backend {name!r}: unknown kind {config.kind!r} (known: {self.kinds()})")
        module_name, _, class_name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError as exc:
            raise ConfigError(
                f"backend {name!r} of kind {config.kind!r} needs a package that is not installed: {exc.name}. "
                "Install margin with the `local` extra (`make serve` does)."
            ) from exc
        backend: Backend = cls(name, config, services)
        return backend
