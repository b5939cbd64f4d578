"""The governance service: the rules in force, the counter store, and the background work (re-reading
rules so every replica sees admin changes within `admission.refresh_s`, charging stale reservations)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from margin import tasks
from margin.config import Settings, with_reloaded
from margin.errors import MarginError, Overloaded
from margin.governance.admission import Admission, BudgetHold, counter_name, hold_for, window
from margin.governance.catchup import CatchUp, delays_for
from margin.governance.rules import SHARED, Part, Rules, Subject, build_rules, load_rules, matches
from margin.governance.slots import STREAMS, WAITING_STREAMS, LocalSlots, SharedSlots, Slots, SlotStore
from margin.governance.store import RELOADS, RESERVATION_PAGE, Hold, LocalStore, Store
from margin.ledger.db import UNREACHABLE
from margin.ledger.read import budget_spent, recorded
from margin.logs import failure, printable
from margin.singleflight import SingleFlight
from margin.specs import BudgetSpec

log = logging.getLogger("margin.governance")


def make_store(settings: Settings) -> Store:
    if settings.storage.redis:
        from margin.governance.redis_store import EMBEDDED_ENV, RedisStore

        # margin's own redis-server is named by the supervisor that started it (the exact URL), never guessed
        # from the URL's text (a configured `redis://margin-redis-master:6379` is checked like any other)
        embedded = os.environ.get(EMBEDDED_ENV) == settings.storage.redis
        return RedisStore(settings.storage.redis, embedded=embedded)
    return LocalStore()


def spend_org(budget: BudgetSpec, org: str | None) -> tuple[str | None] | None:
    """Whose rows a budget counter adds up: the org its scope names, else, for a per-org scope (a team, tag or
    user scope naming no org), the org of the counter (`org`, None for callers in no org), else every org."""
    if budget.scope.org is not None:
        return (budget.scope.org,)
    return (org,) if budget.scope.per_org else None


def spend_scope(budget: BudgetSpec, part: Part) -> tuple[str, str | None]:
    """The (kind, value) whose ledger rows a counter adds up: a user scope's rows of the user's pseudonym (the
    ledger's column), a per-value tag scope's of the counter's value (`customer=acme` for `customer=*`)."""
    scope = budget.scope
    if scope.kind == "user":
        return "user", part.value
    if scope.per_value:
        return "tag", f"{(scope.value or '').partition('=')[0]}={part.value}"
    return scope.kind, scope.value


async def ledger_spent(engine: Any, budget: BudgetSpec, now: datetime, part: Part = SHARED) -> int:
    """What the ledger says a budget's current window has spent (nano-USD or tokens): margin.ledger.read's
    budget_spent, the figure the dashboard and the admin API show too (rows matched as admission matched
    them: one org's rows for a per-org counter, one value's for a per-value one, tags bound to the row's key
    only)."""
    start, end = window(budget.period, now)
    kind, value = spend_scope(budget, part)
    async with engine.connect() as connection:
        spent: int = await connection.run_sync(
            budget_spent, kind, value, budget.usd is not None, start, end, spend_org(budget, part.org)
        )
    return spent


FLUSH_TIMEOUT_S = 10.0  # longest a request waits for the outbox to reach the ledger before a lost counter is seeded


async def ledger_recorded(engine: Any, request_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Those of these requests the ledger has a row for, with its cost (margin.ledger.read's `recorded`)."""
    if not request_ids:
        return {}
    async with engine.connect() as connection:
        found: dict[str, tuple[int, int]] = await connection.run_sync(recorded, request_ids)
    return found


class Governance:
    def __init__(self, settings: Settings, engine: Any, store: Store | None = None) -> None:
        self.settings = settings
        self.engine = engine  # AsyncEngine of the ledger database
        self.store = store or make_store(settings)
        self._pools: list[SharedSlots] = []  # started and closed with this service
        cap = settings.admission.max_streams_per_key  # where the budget counters are: this process, or Redis
        self.streams: Slots = self.shared_slots(STREAMS, cap, "stream") or LocalSlots(cap)
        # as many more per key for streams that only wait for an identical request's answer (a coalesced miss)
        self.stream_waiters: Slots = self.shared_slots(WAITING_STREAMS, cap, "waiting stream") or LocalSlots(cap)
        self.rules: Rules = build_rules(settings, [])
        # when the budgets in force last changed (or this process started), and when a flush of the outbox that
        # `_seed` waited for was asked: rows older than the budgets may wait in the outbox until one comes after
        self._budgets_since = time.monotonic()
        self._flushed_at: float | None = None
        self._known: dict[str, BudgetHold] = {}  # the counters this process reconciled (raised after a restart)
        self._swept_hour = -1  # the last UTC hour `_known`'s past windows were forgotten in (`_make_room`)
        self._server = ""  # the counter store's run id (Redis: a new one after every restart)
        self._flights = SingleFlight()
        self._task: asyncio.Task[None] | None = None
        self._unanswered: deque[str] = deque(maxlen=10_000)  # admits whose answer was lost, to release
        self._generation = ""  # the shared reload announcement last seen (margin.workers, replicas)
        self._unannounced = False  # this process reloaded while the store was down: announce it when it is back
        self.reloaded_elsewhere: Callable[[], Awaitable[object]] | None = None  # re-reads this process's config
        # each pass, first: has a key been revoked or rotated elsewhere (margin.keywatch; the ledger first, so
        # that a Redis down does not keep it from being read)
        self.follow_keys: Callable[[], Awaitable[object]] | None = None
        # moves this process's ledger outbox into the database (services): done before a counter the store lost
        # is counted again from the ledger, which else misses the rows still waiting there (a second of them)
        self.flush_ledger: Callable[[], Awaitable[bool]] | None = None
        # the same, always waiting for one whole ingest pass (Outbox.flush_ok): the restart path's, which must not
        # take a failed last pass for the database still being away (`flush_ledger` may: a new counter's request
        # is refused at once then); None: `flush_ledger`
        self.flush_outbox: Callable[[], Awaitable[bool]] | None = None
        self.flush_timeout_s = FLUSH_TIMEOUT_S
        self.restart_page = RESERVATION_PAGE  # reservations handled at a time by the pass after a store restart
        # rebuilt counters raised to the ledger's spend again once the other processes' outboxes are in it
        self.catchup = CatchUp(delays_for(settings.storage.flush_interval_ms))
        self._catchup_task: asyncio.Task[None] | None = None
        self._closing = False  # `close` was called: the refresh loop stops at its next pass

    def shared_slots(self, pool: str, cap: int | None, what: str) -> SharedSlots | None:
        """A per-key cap of `pool` counted across every process sharing the store's Redis (open streams; the
        file gates' running places, margin.gates), renewed and closed with this service; None with the
        in-process store (one process: the caller counts in process, the fastest)."""
        if not isinstance(self.store, SlotStore):
            return None
        slots = SharedSlots(cap, self.store, pool, what)
        self._pools.append(slots)
        return slots

    async def start(self) -> None:
        ping = getattr(self.store, "ping", None)
        if ping is not None:
            await ping()
        check_memory = getattr(self.store, "check_memory", None)
        if check_memory is not None:  # a Redis that can evict budget counters refuses the start
            await check_memory()
        await self.refresh()
        self._generation = await self.store.generation(RELOADS)
        self._server = await self.store.server_id()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._catchup_task = asyncio.get_running_loop().create_task(self.catchup.run(self._catch_up))
        for pool in self._pools:
            pool.start()

    async def refresh(self) -> None:
        rules = await load_rules(self.settings, self.engine)
        if rules.budgets != self.rules.budgets:
            self._budgets_since = time.monotonic()
        self.rules = rules

    def reload(self, settings: Settings) -> None:
        """New config file (SIGHUP): its budgets, limits, flags and policies; the rest needs a restart."""
        self.settings = with_reloaded(self.settings, settings)

    async def _loop(self) -> None:
        interval = self.settings.admission.refresh_s
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                if self.follow_keys is not None:
                    await self.follow_keys()
                if not await self._follow_reloads():  # a reload refreshes the rules itself
                    await self.refresh()
                await self._release_unanswered()
                await self._follow_restart()
                charged = await self.store.reap()
                if charged:
                    log.warning("charged %d budget reservations past their deadline at the reserved amount", charged)
            except (MarginError, *UNREACHABLE) as exc:  # Redis or the ledger down: expected, one line, no traceback
                log.warning("refreshing governance rules failed; keeping the previous ones: %s", failure(exc))
            except Exception:
                log.exception("refreshing governance rules failed; keeping the previous ones")

    async def announce_reload(self) -> None:
        """This process re-read its config (SIGHUP, POST /admin/reload): every other process sharing the store
        (the workers of `--workers N`, replicas) re-reads its own within `admission.refresh_s`."""
        try:
            self._generation = await self.store.generation(RELOADS, bump=True)
        except MarginError:  # the store is down: announced by the next pass that reaches it
            self._unannounced = True
            raise
        self._unannounced = False

    async def _follow_reloads(self) -> bool:
        """Re-read this process's config if another announced a reload since; True when it did. A reload of
        this process's own that could not be announced (Redis down) is announced now: before, it never was,
        and the other replicas kept their old config though `POST /admin/reload` had answered 200."""
        if self._unannounced:
            await self.announce_reload()
            return False
        current = await self.store.generation(RELOADS)
        if current == self._generation or self.reloaded_elsewhere is None:
            return False
        self._generation = current
        if not current:  # the store lost the last announcement (a restart): nothing to follow
            return False
        await self.reloaded_elsewhere()
        return True

    async def _follow_restart(self) -> None:
        """The store restarted (Redis' run id changed). Back from a snapshot, its counters hold what was spent
        when the snapshot was taken, and they exist, so nothing reconciled them: a $5 budget whose Redis came
        back from a 2 s old snapshot spent $6.94. Every counter of the current windows this process reconciled
        is raised to what the ledger says (never lowered: what settled since the restart stays counted). The
        snapshot also brought back the reservations open when it was taken, their settles since lost: those
        whose request has its ledger row are settled again with the row's cost, page by page before the raise;
        before, the reaper charged them at their reservation on top of the raise (an overcharge: budgets hit
        early). Dropping them instead lost their cost where the raise did nothing (a counter already above the
        ledger's spend, holding other replicas' settles whose rows were not in the ledger yet)."""
        current = await self.store.server_id()
        if current == self._server:
            return
        flush = self.flush_outbox or self.flush_ledger
        if flush is not None:  # what this process settled before the restart: in the ledger read
            await flush()
        now = datetime.now(UTC)
        known: dict[str, BudgetHold] = {}
        for name, item in list(self._known.items()):
            if counter_name(item.budget, window(item.budget.period, now)[0], item.part) != name:
                del self._known[name]  # a past window's
            else:
                known[name] = item
        dropped = await self._replay_finished({name: item.budget.usd is not None for name, item in known.items()})
        # read after every row the replays found: each is in these spends
        spent = {name: await ledger_spent(self.engine, item.budget, now, item.part) for name, item in known.items()}
        done = await self.store.recount(spent, {})
        for name in done.raised:
            log.warning("budget %s: raised to the ledger's spend after the counter store restarted", name)
        for name in spent:  # the other processes' rows still in their outboxes: counted by the follow-ups
            self.catchup.schedule(self._known[name])
        if dropped:
            log.warning("dropped %d reservations of finished requests the counter store brought back", dropped)
        self._server = current  # last: a pass that failed halfway is done again by the next

    async def _replay_finished(self, usd: dict[str, bool]) -> int:
        """The reservations the store holds whose requests have their ledger rows, settled again with what each
        row cost (never less than it spent: a counter the raise leaves alone, holding settles whose rows are not
        in the ledger yet, still gets it); how many. Read, looked up and recounted `restart_page` ids at a time:
        before, every id of two days of abandoned requests came in one Redis reply, and one lookup. Each page is
        recounted with nothing raised (to 0: a spend is never less): the raise follows, once, with the spends read
        after every lookup (a row found is in them; a counter replayed then raised holds the larger, not both)."""
        if not usd:  # no counter this process reconciled: no replay could cover one (recount needs them all)
            return 0
        unraised = dict.fromkeys(usd, 0)
        dropped = 0
        async with contextlib.aclosing(self.store.reservations(self.restart_page)) as pages:
            async for page in pages:
                finished = await ledger_recorded(self.engine, page)
                if finished:
                    replays = {
                        rid: {n: cost if usd[n] else tokens for n in usd} for rid, (cost, tokens) in finished.items()
                    }
                    dropped += (await self.store.recount(unraised, replays)).dropped
        return dropped

    async def release_unanswered(self, request_id: str) -> None:
        """The store's answer to an admit was lost (Redis: a connection error after the script may have run).
        A reservation may then exist that no request will settle, and the reaper would charge it in full:
        release it (a settle of nothing). While the store stays down, the id is kept and released by the
        reaper's next pass, before it reaps; a process that dies first leaves it to the reaper (overcharged,
        never overspent)."""
        try:
            await self.store.settle(request_id, {})
        except MarginError:
            self._unanswered.append(request_id)

    async def _release_unanswered(self) -> None:
        while self._unanswered:
            await self.store.settle(self._unanswered[0], {})  # raises while the store is down: next pass
            self._unanswered.popleft()

    async def seed(self, holds: list[BudgetHold], now: datetime, lost: bool = False) -> None:
        """Reconcile a counter from the ledger the first time this process uses it. Requests arriving while
        that runs wait for the same reconciliation (one ledger scan, not one per request)."""
        for item in holds:
            name = item.hold.counter
            if name in self._known:
                continue
            self._make_room(now)
            await self._flights.run(name, functools.partial(self._seed, item, now, lost))

    async def reconcile(self, counters: Sequence[tuple[BudgetSpec, Part]], now: datetime) -> None:
        """Reconcile from the ledger the current-window counters a read is about to show (`/admin/budgets`, the
        budget gauges, `/v1/margin/usage`) that this process has not reconciled yet, as a request's first use
        would. Before, after a restart with the counters in process (or in a Redis that lost them), each read 0
        until a request used it: a budget's gauge dropped to 0 and its alerts went quiet. Never refuses the read:
        it stops while a tenth of `admission.max_budget_counters` is left for requests (past windows' counters
        forgotten first), and when the ledger cannot be read (the counters are shown as the store holds them)."""
        room = self.settings.admission.max_budget_counters
        room -= max(1, room // 10)
        for budget, part in counters:
            item = hold_for(budget, now, 0, 0, part)
            if item.hold.counter in self._known:
                continue
            if len(self._known) >= room:
                self._forget_past(now)
                if len(self._known) >= room:
                    return
            try:
                await self.seed([item], now)
            except MarginError as exc:
                log.warning("budget counters not reconciled for a read: %s", printable(exc.message))
                return

    def _make_room(self, now: datetime) -> None:
        """Bound the counters this process knows (`admission.max_budget_counters`; a per-user budget has one per
        user): past windows' are forgotten, and when the current windows' alone fill it, a request needing a new
        counter is refused (503, retryable), never admitted by forgetting a counter it might under-count."""
        cap = self.settings.admission.max_budget_counters
        if len(self._known) < cap:
            return
        hour = int(now.timestamp() // 3600)  # every window ends on a whole hour: one sweep an hour finds them all
        if hour != self._swept_hour:
            self._swept_hour = hour
            self._forget_past(now)
        if len(self._known) >= cap:
            log.warning("%d budget counters in the current windows (admission.max_budget_counters)", cap)
            raise Overloaded(
                f"too many budget counters in use ({cap}, admission.max_budget_counters: one per user or tag "
                "value of per-user budgets); the request was not admitted",
                code="budget_counters_full",
                headers={"retry-after": "60"},
            )

    def _forget_past(self, now: datetime) -> None:
        for name in [n for n, item in self._known.items() if item.resets_at is not None and item.resets_at <= now]:
            del self._known[name]

    async def reseed(self, holds: list[BudgetHold], now: datetime) -> None:
        """The counter store lost counters this process had reconciled: reconcile them again (those still
        there keep their values: seeding only sets a missing counter)."""
        for item in holds:
            self._known.pop(item.hold.counter, None)
        await self.seed(holds, now, lost=True)

    async def _seed(self, item: BudgetHold, now: datetime, lost: bool) -> None:
        """The ledger's spend, and what was settled while the counter was gone (parked in the store) whose row
        the ledger did not have yet, looked up before the spend is read (a row found is in that spend). The
        process moves its own outbox into the ledger first: before, the rows acknowledged in the last second were
        not counted (a lost counter's, their settles lost with it; a new budget's, settled before it existed;
        after a kill -9, the killed process's), and a budget spent past its limit. A new counter needs that only
        once after the budgets changed (or the process started): a row appended since was settled into its
        counter, or made it. A counter of a budget shared by its scope (not one per user or tag value) is
        followed up (`catchup`) like a lost one: requests admitted before the budget existed end later, and
        their rows are counted once they reach the ledger."""
        name = item.hold.counter
        try:
            stale = self._flushed_at is None or self._flushed_at <= self._budgets_since
            if (lost or stale) and self.flush_ledger is not None:  # requests wait on it: bounded, else refused
                asked = time.monotonic()
                if not await asyncio.wait_for(self.flush_ledger(), self.flush_timeout_s):  # a pass that failed:
                    raise ConnectionError("the outbox could not be moved into the ledger")  # its rows not in the read
                self._flushed_at = max(asked, self._flushed_at or asked)
            counted = await ledger_recorded(self.engine, await self.store.parked(name))
            spent = await ledger_spent(self.engine, item.budget, now, item.part)
        except UNREACHABLE as exc:  # a locked, slow or unreachable ledger (asyncpg's refused connect: an OSError)
            log.warning("budget %s: the ledger could not be read to reconcile it: %s", name, failure(exc))
            raise Overloaded(
                "the ledger could not be read to check a budget; retry shortly",
                code="governance_unavailable",
                headers={"retry-after": "1"},
            ) from exc
        if await self.store.seed(name, spent, item.hold.expire_s, sorted(counted)):
            log.info("budget %s: reconciled spent=%d from the ledger", name, spent)
        self._known[name] = item
        if lost or not item.budget.scope.per_value:  # the rows of other processes' outboxes, of requests in flight
            self.catchup.schedule(item)

    async def _catch_up(self, item: BudgetHold) -> bool:
        """A follow-up of a rebuilt counter (margin.governance.catchup): raised to the ledger's spend if that is
        higher (never lowered: both are lower bounds of what was spent); True when raised. A past window's
        counter is left alone."""
        name, now = item.hold.counter, datetime.now(UTC)
        if counter_name(item.budget, window(item.budget.period, now)[0], item.part) != name:
            return False
        if not await self.store.raise_spent(name, await ledger_spent(self.engine, item.budget, now, item.part)):
            return False
        log.warning("budget %s: raised to the ledger's spend by a follow-up after it was rebuilt", name)
        return True

    async def resize(
        self, admission: Admission, amounts: Sequence[int], now: datetime
    ) -> tuple[BudgetHold, tuple[int, int]] | None:
        """Set each of the request's holds to its amount (`amounts`, in the order of `admission.holds`; what it is to
        hold, so a call made again after a lost reply changes nothing more), all or nothing: a fallback's top-up
        by what the attempts that failed were billed (`margin.pipeline.topup`), a coalesced waiter's reservation
        given back while it waits for another request's answer and taken again when it must call upstream
        itself. None when done (the holds now say the new amounts, as the store's reservation does: the reaper
        charges those); else the hard budget with no room for its increase, with its counter (spent, reserved),
        and nothing changed. A counter the store lost is seeded again from the ledger (`now`: the request's
        start, its holds' windows) and the change tried once more, as admission does; still lost, or the
        reservation gone (settled, reaped), raises `Overloaded` (503): nothing was changed."""
        holds = [
            dataclasses.replace(item.hold, amount=amount) for item, amount in zip(admission.holds, amounts, strict=True)
        ]
        if not holds:
            return None
        result = await self.store.extend(admission.request_id, holds)
        if result.unseeded:
            await self.reseed(admission.holds, now)
            if not _rebuilt_counts_nothing_held(admission, holds):
                raise Overloaded(
                    "the budget reservation could not be changed: a budget counter was lost and rebuilt from the "
                    "ledger, which does not count this request's reservation; retry",
                    code="governance_unavailable",
                )
            result = await self.store.extend(admission.request_id, holds)
        if result.unseeded or result.gone:
            raise Overloaded(
                "the budget reservation could not be changed: "
                + ("a budget counter was lost and could not be restored" if result.unseeded else "it is no longer open")
                + "; retry",
                code="governance_unavailable",
            )
        if result.failed is not None:
            return admission.holds[result.failed], result.counters[result.failed]
        admission.holds[:] = [
            dataclasses.replace(item, hold=hold) for item, hold in zip(admission.holds, holds, strict=True)
        ]
        return None

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
        ledger reconciliation would not count this row for it either. An answer with no price
        (`cost_nanousd` None) from a model the reservation priced (an upstream answering at a tier margin has
        no price for) is charged what its USD holds reserved, never $0."""
        actual: dict[str, int] = {}
        unforeseen = cost_nanousd is None and served is not None and served.model not in admission.unpriced
        for item in admission.holds:
            applies = served is None or matches(item.budget.scope, served)
            if item.budget.usd is None:
                amount = tokens_in + tokens_out
            else:
                amount = item.hold.amount if unforeseen else cost_nanousd or 0
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
        self._closing = True  # the loop ends at its next pass even if a call swallowed the cancellation
        for task in (self._task, self._catchup_task):
            await tasks.stop(task)
        for pool in self._pools:
            await pool.close()
        await self.store.close()


def _rebuilt_counts_nothing_held(admission: Admission, holds: Sequence[Hold]) -> bool:
    """Whether a change may be tried again on counters rebuilt from the ledger: no hard hold grows from an amount
    this request already held. A rebuilt counter counts only the ledger's spend, not the reservations in flight,
    so the store would check such a hold's increase alone (the hold it had is on no counter any more) and could
    let the budget be overspent by it; growing from nothing (a coalesced waiter taking its reservation back) is
    checked in full."""
    return not any(
        new.hard and item.hold.amount > 0 and new.amount > item.hold.amount
        for item, new in zip(admission.holds, holds, strict=True)
    )
