"""A transformers `Cache` whose layers hold keys and values compressed by a KV method.

Each `update` encodes the new tokens (token-grouped codecs such as KIVI's per-channel keys keep the last,
incomplete group in fp16, as KIVI does) and returns the whole cache decoded from its compressed bytes, so
every attention read goes through the compressed cache. With quantize_prompt=True (the default) the prompt's
own attention also reads the compressed keys and values; with False it reads the exact ones once.
Importing this module imports torch and transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from margin.kv.codecs import Codec, Encoded
from margin.kv.methods import KVMethod, LayerCodecs


class _Store:
    """The compressed tokens of one tensor stream (keys or values) of one layer."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.encoded: Encoded | None = None
        self.tail: torch.Tensor | None = None  # fp16 tokens waiting for a full token group

    def append(self, x: torch.Tensor) -> torch.Tensor:
        """Store x (batch, heads, tokens, dim) and return all stored tokens, decoded, as float32."""
        pending = x if self.tail is None else torch.cat([self.tail.float(), x.float()], dim=-2)
        full = pending.shape[-2] - pending.shape[-2] % self.codec.token_group
        if full:
            fresh = self.codec.encode(pending[..., :full, :])
            self.encoded = fresh if self.encoded is None else self.encoded.cat(fresh)
        self.tail = pending[..., full:, :].half() if full < pending.shape[-2] else None
        return self.read()

    def read(self) -> torch.Tensor:
        pieces = []
        if self.encoded is not None:
            pieces.append(self.codec.decode(self.encoded))
        if self.tail is not None:
            pieces.append(self.tail.float())
        return torch.cat(pieces, dim=-2)

    @property
    def nbytes(self) -> int:
        tail = 0 if self.tail is None else self.tail.numel() * self.tail.element_size()
        return (0 if self.encoded is None else self.encoded.nbytes) + tail


class CompressedLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One decoder layer's KV cache, stored compressed."""

    is_croppable = False

    def __init__(self, codecs: LayerCodecs, *, quantize_prompt: bool = True) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.codecs = codecs
        self.quantize_prompt = quantize_prompt
        self.length = 0
        self.stores = (_Store(codecs.key), _Store(codecs.value))

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        prompt = self.length == 0
        self.length += key_states.shape[-2]
        keys = self.stores[0].append(key_states)
        values = self.stores[1].append(value_states)
        if prompt and not self.quantize_prompt:
            return key_states, value_states
        return keys.to(self.dtype), values.to(self.dtype)

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        self.stores = (_Store(self.codecs.key), _Store(self.codecs.value))
        self.is_initialized = False

    @property
    def nbytes(self) -> int:
        return self.stores[0].nbytes + self.stores[1].nbytes


class CompressedCache(Cache):
    """A `Cache` of `CompressedLayer`s, one per decoder layer, built from a `KVMethod`."""

    def __init__(
        self, method: KVMethod, *, num_layers: int, head_dim: int, quantize_prompt: bool = True, seed: int = 0
    ) -> None:
        self.method = method
        layers: list[Any] = [
            CompressedLayer(c, quantize_prompt=quantize_prompt) for c in method.build(head_dim, num_layers, seed)
        ]
        super().__init__(layers=layers)

    @classmethod
    def for_model(cls, method: KVMethod, model: Any, *, quantize_prompt: bool = True, seed: int = 0) -> CompressedCache:
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            method, num_layers=config.num_hidden_layers, head_dim=head_dim, quantize_prompt=quantize_prompt, seed=seed
        )

    @property
    def nbytes(self) -> int:
        """Bytes the compressed keys and values occupy (codes, norms, scales, fp16 tails), all layers."""
        return sum(layer.nbytes for layer in self.layers if isinstance(layer, CompressedLayer))
