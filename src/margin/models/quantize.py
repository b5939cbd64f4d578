"""GGUF quantization variants of a local model, for quality × cost experiments.

The shipped SmolLM2-135M is Q4_1, and llama.cpp quantizes from a higher precision, so the first step writes
an F16 GGUF: every tensor of the source is read and dequantized with the `gguf` package (Q4_1 → float32 →
float16; F32 norms stay F32) and written with all the source's metadata. Every variant is then made from
that F16 with llama.cpp's own quantizer (`llama_model_quantize` in llama-cpp-python). Quality is therefore
bounded by the Q4_1 source: "F16" here is Q4_1's values in a wider type, not the original weights, and a
Q8_0 or Q6_K made from it can at best match Q4_1.

SmolLM2-135M's hidden size (576) is not a multiple of 256, so llama.cpp quantizes the tensors whose rows
are 576 wide with a fallback type in the K-quant formats (it logs this); sizes are measured, not assumed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from margin.errors import ConfigError

DEFAULT_TYPES = ("Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K")
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def ftype(name: str) -> int:
    import llama_cpp

    canonical = ALIASES.get(name.upper(), name.upper())
    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{canonical}", None)
    if value is None:
        known = sorted(
            n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_")
        )
        raise ConfigError(f"unknown quantization type {name!r}; llama.cpp knows {', '.join(known)}")
    return int(value)


def canonical(name: str) -> str:
    return ALIASES.get(name.upper(), name.upper())


def write_f16(source: Path, target: Path) -> dict[str, int]:
    """Dequantize every quantized tensor of `source` to F16 (F32/F16 tensors are copied) into `target`,
    with the same metadata except general.file_type. Returns tensor counts by source type."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            writer.add_key_value(field.name, int(gguf.LlamaFileType.MOSTLY_F16), gguf.GGUFValueType.UINT32)
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    counts: dict[str, int] = {}
    kept = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        if tensor.tensor_type in kept:
            writer.add_tensor(tensor.name, np.array(tensor.data))
        else:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            writer.add_tensor(tensor.name, values.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


@contextmanager
def stderr_to(log: Path) -> Iterator[None]:
    """Send file descriptor 2 (llama.cpp's per-tensor log lines) to `log` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with log.open("ab") as out:
        os.dup2(out.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quantize(source: Path, target: Path, kind: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(kind)
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0 or not target.is_file():
        raise ConfigError(f"llama.cpp could not quantize {source} to {kind} (code {code})")


@dataclass(frozen=True, slots=True)
class VariantFile:
    name: str  # F16, Q8_0, …
    path: str
    bytes: int
    sha256: str
    make_s: float | None  # None: the file was already there (kept, not made again)
    load_s: float | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_seconds(path: Path, threads: int) -> float:
    """Time to load the GGUF into a llama.cpp context (what a gateway pays at start)."""
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, verbose=False)
    elapsed = time.perf_counter() - started
    llm.close()
    return elapsed


def make_variants(
    source: Path,
    out_dir: Path,
    kinds: list[str],
    *,
    threads: int = 2,
    prefix: str = "smollm2-135m",
    measure: bool = True,
) -> list[VariantFile]:
    """F16 from the source, then each of `kinds` from the F16, into `out_dir` (files that exist are kept)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[VariantFile] = []
    f16 = out_dir / f"{prefix}-f16.gguf"
    plan = [("F16", f16), *((canonical(k), out_dir / f"{prefix}-{canonical(k).lower()}.gguf") for k in kinds)]
    for name, path in plan:
        started, make_s = time.perf_counter(), None
        if not path.is_file():
            partial = path.with_suffix(".partial")
            if name == "F16":
                write_f16(source, partial)
            else:
                with stderr_to(out_dir / "quantize.log"):
                    quantize(f16, partial, name, threads)
            partial.rename(path)
            make_s = time.perf_counter() - started
        load_s = load_seconds(path, threads) if measure else None
        made.append(VariantFile(name, str(path), path.stat().st_size, _sha256(path), make_s, load_s))
    return made


def source_variant(source: Path, threads: int, measure: bool = True) -> VariantFile:
    """The source file itself as a variant, named by its GGUF file type (the shipped model: Q4_1)."""
    import gguf

    field = gguf.GGUFReader(source).fields.get(gguf.Keys.General.FILE_TYPE)
    name = "SOURCE"
    if field is not None:
        with suppress(ValueError):
            name = gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
    load_s = load_seconds(source, threads) if measure else None
    return VariantFile(name, str(source), source.stat().st_size, _sha256(source), None, load_s)


def manifest(source: Path, variants: list[VariantFile]) -> dict[str, Any]:
    import importlib.metadata as md

    return {
        "schema": "margin.models.quantize/1",
        "source": {"path": str(source), "bytes": source.stat().st_size, "sha256": _sha256(source)},
        "note": "every variant is quantized from an F16 dequantized from the Q4_1 source: quality is bounded by Q4_1",
        "versions": {"gguf": md.version("gguf"), "llama-cpp-python": md.version("llama-cpp-python")},
        "variants": [asdict(v) for v in variants],
    }
