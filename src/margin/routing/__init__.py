"""Choosing where a request goes: candidates, fallbacks, circuit breakers."""
