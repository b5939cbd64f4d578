"""Response caches: exact (`exact.py`: hash of the normalized request; memory, SQLite or Redis) and semantic
with an error bound (`semantic.py`: scoped, bounded, TTL; `calibration.py`: δ → cosine threshold; `encoder.py`:
MiniLM from the builtin wheel, lazy; `layer.py`: how the gateway uses it; `shared.py`: its additions shared
through Redis between processes). Submodules are imported where used, so the gateway does not load numpy or
usearch unless the semantic cache is on."""
