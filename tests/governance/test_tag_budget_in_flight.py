"""A per-tag-value hard budget (`customer=*`) counts the reservations of its requests in flight, as a key's or a
global budget does (the same reserve → settle: one counter per value, reserved in admit's atomic step): requests
sent at once, all in flight together, are admitted only while their worst cases fit, and never spend past it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.helpers import fake_settings, gateway, reserved_input

CHAT = "/v1/chat/completions"
BODY = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
WORST = reserved_input(BODY) + 4  # what one request reserves: its prompt's bound and its max_tokens
FITS = 3


async def test_requests_in_flight_at_once_never_overspend_a_per_tag_hard_budget(tmp_path: Path) -> None:
    budget = {"name": "each", "scope": {"kind": "tag", "value": "customer=*"}, "tokens": FITS * WORST, "period": "day"}
    backends = {"api": {"kind": "fake", "output_tokens": 4, "ttft_ms": 3000}}  # every request in flight 3 s
    settings = fake_settings(tmp_path / "l.db", budgets=[budget], backends=backends)
    async with gateway(settings) as gw:

        async def send(customer: str) -> int:
            answer = await gw.http.post(CHAT, json=BODY, headers={"x-margin-tags": f"customer={customer}"})
            return answer.status_code

        statuses = await asyncio.gather(*(send(customer) for customer in ["acme"] * 10 + ["globex"] * 10))
        rows = await gw.rows()
    for customer, sent in (("acme", statuses[:10]), ("globex", statuses[10:])):
        assert sorted(sent) == [200] * FITS + [429] * (10 - FITS), customer  # each value: its own counter
        spent = sum(r.input_tokens + r.output_tokens for r in rows if r.tags.get("customer") == customer)
        assert 0 < spent <= FITS * WORST
