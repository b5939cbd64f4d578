"""The ledger: one append-only row per request, idempotent by (request_id, kind); totals are derived."""
