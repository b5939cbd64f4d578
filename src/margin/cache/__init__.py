"""Response caches: exact (hash of the normalized request) and semantic (error-bounded)."""
