"""The governance service: the rules in force, the counter store, and the background work (re-reading
rules so every replica sees admin changes within `admission.refresh_s`, charging stale reservations)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from margin.config import Settings
from margin.errors import MarginError
from margin.governance.admission import Admission, BudgetHold, window
from margin.governance.rules import Rules, Subject, build_rules, governed_tags, load_rules, matches
from margin.governance.store import LocalStore, Store
from margin.governance.streams import StreamSlots
from margin.ledger.models import api_keys, ledger
from margin.singleflight import SingleFlight
from margin.specs import BudgetSpec

log = logging.getLogger("margin.governance")


def make_store(settings: Settings) -> Store:
    if settings.storage.redis:
        from margin.governance.redis_store import RedisStore

        return RedisStore(settings.storage.redis)
    return LocalStore()


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


async def _bound_tags(connection: Any) -> dict[str, dict[str, str]]:
    """Each key's bound tags (keys are never edited, only revoked: this is what they were when they ran)."""
    result = await connection.execute(sa.select(api_keys.c.id, api_keys.c.tags))
    return {row.id: dict(row.tags or {}) for row in result}


async def ledger_spent(engine: Any, budget: BudgetSpec, now: datetime, org: str | None = None) -> int:
    """What the ledger says a budget's current window has spent (nano-USD or tokens): the rows its scope
    matches exactly as admission matched them (tags bound to the row's key only; one org's rows for a
    per-org scope)."""
    start, end = window(budget.period, now)
    columns = [ledger.c[name] for name in ("key_id", "team", "org", "tags", "model", "backend")]
    measure = ledger.c.cost_nanousd if budget.usd is not None else ledger.c.input_tokens + ledger.c.output_tokens
    query = sa.select(*columns, measure.label("amount")).where(ledger.c.kind == "request")
    if budget.scope.per_org:
        query = query.where(ledger.c.org.is_(None) if org is None else ledger.c.org == org)
    if start is not None and end is not None:
        if engine.dialect.name == "sqlite":  # stored as naive UTC text
            start, end = _naive_utc(start), _naive_utc(end)
        query = query.where(ledger.c.created_at >= start, ledger.c.created_at < end)
    total = 0
    async with engine.connect() as connection:
        bound = await _bound_tags(connection) if budget.scope.kind == "tag" else {}
        async for row in await connection.stream(query):
            tags = row.tags or {}
            if bound:
                tags = governed_tags(tags, bound.get(row.key_id, {}), row.key_id is not None)
            subject = Subject(row.key_id, row.team, row.org, tags, row.model, row.backend)
            if row.amount and matches(budget.scope, subject):
                total += int(row.amount)
    return total


class Governance:
    def __init__(self, settings: Settings, engine: Any, store: Store | None = None) -> None:
        self.settings = settings
        self.engine = engine  # AsyncEngine of the ledger database
        self.store = store or make_store(settings)
        self.streams = StreamSlots(settings.admission.max_streams_per_key)
        self.rules: Rules = build_rules(settings, [])
        self._seeded: set[str] = set()
        self._flights = SingleFlight()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ping = getattr(self.store, "ping", None)
        if ping is not None:
            await ping()
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def refresh(self) -> None:
        self.rules = await load_rules(self.settings, self.engine)

    def reload(self, settings: Settings) -> None:
        """New config file (SIGHUP): its budgets, limits, flags and policies; the rest needs a restart."""
        self.settings = self.settings.model_copy(
            update={name: getattr(settings, name) for name in ("budgets", "limits", "flags", "policies")}
        )

    async def _loop(self) -> None:
        interval = self.settings.admission.refresh_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
                charged = await self.store.reap()
                if charged:
                    log.warning("charged %d budget reservations past their deadline at the reserved amount", charged)
            except Exception:
                log.exception("refreshing governance rules failed; keeping the previous ones")

    async def seed(self, holds: list[BudgetHold], now: datetime) -> None:
        """Reconcile a counter from the ledger the first time this process uses it. Requests arriving while
        that runs wait for the same reconciliation (one ledger scan, not one per request)."""
        for item in holds:
            name = item.hold.counter
            if name in self._seeded:
                continue
            await self._flights.run(name, functools.partial(self._seed, item, now))

    async def _seed(self, item: BudgetHold, now: datetime) -> None:
        name = item.hold.counter
        spent = await ledger_spent(self.engine, item.budget, now, item.org)
        if await self.store.seed(name, spent, item.hold.expire_s):
            log.info("budget %s: reconciled spent=%d from the ledger", name, spent)
        self._seeded.add(name)

    async def settle(
        self,
        admission: Admission,
        cost_nanousd: int | None,
        tokens_in: int,
        tokens_out: int,
        served: Subject | None = None,
    ) -> None:
        """Replace the reservation by the actual cost. `served` is the caller with the model and backend that
        answered: a budget that does not match it (another candidate's model budget) is released, as the
        ledger reconciliation would not count this row for it either."""
        actual: dict[str, int] = {}
        for item in admission.holds:
            applies = served is None or matches(item.budget.scope, served)
            amount = (cost_nanousd or 0) if item.budget.usd is not None else tokens_in + tokens_out
            actual[item.hold.counter] = actual.get(item.hold.counter, 0) + (amount if applies else 0)
        charges = [(key, seconds * tokens_out) for key, seconds in admission.tpm_keys if tokens_out]
        if admission.holds or charges:
            await self._settle_with_retry(admission.request_id, actual, charges)

    async def _settle_with_retry(
        self, request_id: str, actual: dict[str, int], charges: list[tuple[str, float]], tries: int = 3
    ) -> None:
        """The request already happened: try hard to record it (settling twice is a no-op). If the store
        stays down, the reaper charges the reservation and the ledger still has the row."""
        for attempt in range(tries):
            try:
                await self.store.settle(request_id, actual, charges)
                return
            except MarginError:
                if attempt + 1 == tries:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.close()
