"""`margin kv`: KV-cache compression (TurboQuant and baselines) on a real model, and its evaluation."""
