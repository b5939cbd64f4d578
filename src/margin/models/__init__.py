"""`margin models`: local model files (quantization variants of a GGUF)."""
