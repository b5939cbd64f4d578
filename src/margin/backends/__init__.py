"""Backends: one module each behind the small `Backend` protocol, built by name through the registry."""
