"""Governance: budgets (reserve → settle), rate limits, feature flags, policies (residency, guards)."""
