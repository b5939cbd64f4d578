"""Counters behind budgets and rate limits: reserve → settle, and GCRA.

A budget counter (one per budget and calendar window) holds `spent` and `reserved`, integers (nano-USD or
tokens). `admit` applies a request's rate-limit checks and, only if they pass and every hard budget hold
fits, charges them and adds all holds to `reserved`: all or nothing, atomically. `settle` moves a request's
reservation to its actual spend exactly once (a second settle of the same request id is a no-op).
Reservations carry a deadline; `reap` charges those whose request has not settled by then (a crashed
replica, a stream that outlived it) at their reserved amount: never released for free, so nothing can spend
past a hard budget by not settling. A late settle replaces that charge by the actual cost. The counter's
spent is reconciled from the ledger when it is first used.

`LocalStore` keeps counters in this process (the event loop makes each call atomic); `RedisStore` in
`redis_store.py` does the same with Lua scripts so several replicas share them.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from margin.ledger.read.budget import SPENT_CAP

SWEEP_S = 60.0  # how often `LocalStore.reap` drops expired counters and idle rate-limit buckets
SWEEP_GRACE_S = 86_400  # a counter re-created by a late settle (its window past) lives a day
RESERVATION_PAGE = 1000  # request ids read, looked up in the ledger and recounted at a time (after a restart)
# what the processes sharing a store announce to each other (`generation`): a config reload (each re-reads its
# config), a key revoked or rotated (each forgets its cached key lookups: margin.keywatch)
RELOADS = "reloaded"
KEYS = "keys"


@dataclass(frozen=True, slots=True)
class Hold:
    counter: str
    limit: int
    amount: int
    hard: bool
    expire_s: int | None = None  # the counter's lifetime (its window plus a day); None: forever


@dataclass(frozen=True, slots=True)
class Admitted:
    """The outcome of `admit`. `wait` > 0: a rate limit refused (seconds to wait). Else `failed` is the first
    hard budget hold that did not fit, or None when all were reserved. `counters`: each hold's counter
    (spent, reserved) as admission left it (for messages and soft-budget warnings). Nothing is charged
    or reserved unless the request is admitted. `unseeded`: a budget counter this process had reconciled is
    gone from the store (a Redis restarted without persistence, an eviction): nothing was checked; reconcile it
    from the ledger again, then admit again."""

    wait: float = 0.0
    failed: int | None = None
    counters: tuple[tuple[int, int], ...] = ()
    unseeded: bool = False
    gone: bool = False  # `extend`: the reservation is no longer open (settled, reaped); nothing was changed

    @property
    def ok(self) -> bool:
        return self.wait <= 0 and self.failed is None and not self.unseeded and not self.gone


@dataclass(frozen=True, slots=True)
class Recount:
    """What `recount` did: reservations dropped, counters raised."""

    dropped: int
    raised: list[str]


@dataclass(frozen=True, slots=True)
class Gcra:
    """One rate-limit check. `increment_s` = cost × period / rate; `tau_s` = the burst tolerance."""

    key: str
    increment_s: float
    tau_s: float


class Store(Protocol):
    @property
    def inline(self) -> bool:
        """Its methods never suspend (in-process counters): a caller may await them where it stands."""
        ...

    async def admit(
        self,
        request_id: str,
        holds: Sequence[Hold],
        ttl_s: float,
        checks: Sequence[Gcra] = (),
        lenient: Sequence[bool] = (),
    ) -> Admitted:
        """Rate limits, then budgets, atomically: see `Admitted`. A `lenient` check only refuses when its key
        is already over its tolerance (TPM: a prompt is admitted while the bucket is not in debt; the
        answer's tokens are charged by `settle`)."""
        ...

    async def extend(self, request_id: str, holds: Sequence[Hold]) -> Admitted:
        """Set an open reservation's hold on each hold's counter to its amount (what it is to hold, not a change:
        called again after a lost reply, it changes nothing more), atomically: all of them when every hard one
        that grows fits, else none (`failed`: the first that did not). A soft hold is not checked (a soft budget
        may settle past its reservation). A hard hold that grows on a counter the store lost reads `unseeded`
        (seed it again, then extend again, as for `admit`); a reservation no longer open (settled, reaped) reads
        `gone`; either way nothing is changed."""
        ...

    async def settle(
        self, request_id: str, actual: Mapping[str, int], charges: Sequence[tuple[str, float]] = ()
    ) -> bool:
        """Release the reservation, add `actual` spend and the GCRA `charges` (key, seconds: the answer's
        tokens for TPM limits); False (and nothing done) when already settled."""
        ...

    async def seed(self, counter: str, spent: int, expire_s: int | None, counted: Sequence[str] = ()) -> bool:
        """Set a counter's spent from the ledger unless it already exists, plus what was settled into it while
        it was gone (`parked`) but for the requests of `counted` (the ledger had their rows); True when set."""
        ...

    async def parked(self, counter: str) -> list[str]:
        """The request ids settled while the counter was gone (a store that lost its data), not yet seeded."""
        ...

    async def counters(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(spent, reserved) per counter; missing counters read (0, 0)."""
        ...

    async def raise_spent(self, counter: str, spent: int) -> bool:
        """Raise an existing counter's spent to `spent` if it holds less; True when raised."""
        ...

    async def server_id(self) -> str:
        """Changes when the store restarts (and may have come back from an older snapshot)."""
        ...

    def reservations(self, page: int = RESERVATION_PAGE) -> AsyncGenerator[list[str], None]:
        """The request ids of the reservations not settled, open or charged by the reaper (two days), in pages of
        at most `page` ids. Between pages the caller may `recount` (settle some of them): every id there from the
        start of the iteration to its end is met (one may be met twice: a second recount of it does nothing)."""
        ...

    async def recount(self, spent: Mapping[str, int], replays: Mapping[str, Mapping[str, int]]) -> Recount:
        """After a restart from a snapshot, atomically: settle again the reservations of the `replays` requests
        (the ledger has their rows; their settles were lost) whose counters are all in `spent`, with the amounts
        given per counter (release, or the reaper's charge undone; the amount added; marked settled), then raise
        each counter of `spent` (its ledger spend, read after `replays`) as `raise_spent` does."""
        ...

    async def reap(self) -> int:
        """Charge reservations past their deadline at their reserved amount; how many."""
        ...

    async def pending(self) -> int:
        """Reservations not yet settled or released."""
        ...

    async def generation(self, topic: str, bump: bool = False) -> str:
        """The last announcement of `topic` (`RELOADS`, `KEYS`) the processes sharing this store made, as a token
        unique to it ("": none known; `bump`: make one, published to the listening processes at once)."""
        ...

    async def close(self) -> None: ...


def saturated(value: int) -> int:
    """A counter's value held within the signed 64 bits Redis' counters have (`RedisStore` does the same in Lua):
    one seeded at SPENT_CAP (hostile rows) stays there as more is spent, so both stores read alike."""
    return max(-SPENT_CAP - 1, min(value, SPENT_CAP))


@dataclass(slots=True)
class _Counter:
    spent: int = 0
    reserved: int = 0
    expires: float | None = None  # time.time() past which `reap` drops it (its window plus a day); None: never


def unspend(counter: _Counter, amount: int) -> None:
    """An amount taken back off `counter.spent` (a reaper's charge undone by the late settle): a spent held at
    SPENT_CAP stays there. The charge was added to a saturated spent as nothing, so taking it off in full left
    the counter below what was spent (a soft budget at SPENT_CAP, a reservation of 2^62 reaped then settled at 0:
    spent 2^62 - 1, under-counted). Never below what the cap said, never wrapped."""
    if counter.spent < SPENT_CAP:
        counter.spent = saturated(counter.spent - amount)


def unreserve(counter: _Counter, amount: int) -> None:
    """A hold taken off `counter.reserved`, never below 0: reservations that added past SPENT_CAP were held at it
    (`saturated`), so taking each off in full went below 0 (three of 2^62 each, released: -2^62 - 1), and a
    negative `reserved` let a soft budget's warnings, and a hard one's check, count less than was held."""
    counter.reserved = max(0, counter.reserved - amount)


@dataclass(slots=True)
class _Reservation:
    holds: tuple[Hold, ...]
    deadline: float


@dataclass(slots=True)
class LocalStore:
    """Counters in this process. Each method runs without awaiting, so it is atomic on the event loop."""

    inline: ClassVar[bool] = True
    settled_memory: int = 100_000
    _counters: dict[str, _Counter] = field(default_factory=dict)
    _reservations: dict[str, _Reservation] = field(default_factory=dict)
    _settled: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _charged: OrderedDict[str, tuple[Hold, ...]] = field(default_factory=OrderedDict)  # reaped, not yet settled
    _tat: dict[str, float] = field(default_factory=dict)
    _swept: float = 0.0  # when `reap` last dropped expired counters and idle rate-limit buckets

    def _counter(self, name: str, expire_s: float | None = None) -> _Counter:
        counter = self._counters.get(name)
        if counter is None:
            expires = None if expire_s is None else time.time() + expire_s
            counter = self._counters[name] = _Counter(expires=expires)
        return counter

    def size(self) -> int:
        """Budget counters and rate-limit buckets held (both bounded: see `reap`). Not `__len__`: an empty store
        would be falsy (`store or make_store(...)`)."""
        return len(self._counters) + len(self._tat)

    async def admit(
        self,
        request_id: str,
        holds: Sequence[Hold],
        ttl_s: float,
        checks: Sequence[Gcra] = (),
        lenient: Sequence[bool] = (),
    ) -> Admitted:
        wait = self._rate_wait(checks, lenient)
        failed = None
        known = request_id in self._reservations or request_id in self._settled or request_id in self._charged
        if wait <= 0 and holds and not known:
            failed = next(
                (i for i, h in enumerate(holds) if h.hard and self._total(h.counter) + h.amount > h.limit), None
            )
            if failed is None:
                for hold in holds:
                    counter = self._counter(hold.counter, hold.expire_s)
                    counter.reserved = saturated(counter.reserved + hold.amount)
                self._reservations[request_id] = _Reservation(tuple(holds), time.time() + ttl_s)
        if wait <= 0 and failed is None:
            self._charge(checks)
        counters = tuple((self._counter(h.counter).spent, self._counter(h.counter).reserved) for h in holds)
        return Admitted(max(wait, 0.0), failed, counters)

    async def extend(self, request_id: str, holds: Sequence[Hold]) -> Admitted:
        reservation = self._reservations.get(request_id)
        counters = tuple((self._counter(h.counter).spent, self._counter(h.counter).reserved) for h in holds)
        if reservation is None:
            return Admitted(counters=counters, gone=bool(holds))
        held = {hold.counter: hold.amount for hold in reservation.holds}
        adds = [hold.amount - held.get(hold.counter, 0) for hold in holds]
        failed = next(
            (i for i, h in enumerate(holds) if h.hard and adds[i] > 0 and self._total(h.counter) + adds[i] > h.limit),
            None,
        )
        if failed is None:
            self._resize(reservation, holds, held)
        counters = tuple((self._counter(h.counter).spent, self._counter(h.counter).reserved) for h in holds)
        return Admitted(0.0, failed, counters)

    def _resize(self, reservation: _Reservation, holds: Sequence[Hold], held: Mapping[str, int]) -> None:
        """The reservation's hold on each of `holds`' counters set to its amount (released, or reaped, with the
        rest), the old one taken off the counter's `reserved` (never below 0) and the new one added."""
        merged = {hold.counter: hold for hold in reservation.holds}
        for hold in holds:
            if hold.amount == held.get(hold.counter, 0):
                continue
            counter = self._counter(hold.counter, hold.expire_s)
            unreserve(counter, held.get(hold.counter, 0))
            counter.reserved = saturated(counter.reserved + hold.amount)
            merged[hold.counter] = dataclasses.replace(merged.get(hold.counter, hold), amount=hold.amount)
        reservation.holds = tuple(merged.values())

    def _total(self, name: str) -> int:
        counter = self._counter(name)
        return counter.spent + counter.reserved

    def _release(self, request_id: str) -> None:
        reservation = self._reservations.pop(request_id, None)
        if reservation is not None:
            for hold in reservation.holds:
                unreserve(self._counter(hold.counter), hold.amount)

    async def settle(
        self, request_id: str, actual: Mapping[str, int], charges: Sequence[tuple[str, float]] = ()
    ) -> bool:
        if request_id in self._settled:
            return False
        self._release(request_id)
        for hold in self._charged.pop(request_id, ()):  # reaped earlier: its charge gives way to the actual cost
            unspend(self._counter(hold.counter), hold.amount)
        for name, amount in actual.items():  # a counter dropped since (a past window) is kept a day again
            counter = self._counter(name, SWEEP_GRACE_S)
            counter.spent = saturated(counter.spent + amount)
        self._charge([Gcra(key, increment_s, 0.0) for key, increment_s in charges])
        self._settled[request_id] = None
        while len(self._settled) > self.settled_memory:
            self._settled.popitem(last=False)
        return True

    async def parked(self, counter: str) -> list[str]:
        return []  # its counters are never lost

    async def seed(self, counter: str, spent: int, expire_s: int | None, counted: Sequence[str] = ()) -> bool:
        if counter in self._counters:
            return False
        self._counters[counter] = _Counter(spent, 0, None if expire_s is None else time.time() + expire_s)
        return True

    async def counters(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        out = {}
        for name in names:
            counter = self._counters.get(name, _Counter())
            out[name] = (counter.spent, counter.reserved)
        return out

    async def reap(self) -> int:
        now = time.time()
        if now - self._swept >= SWEEP_S:
            self._swept = now
            self._sweep(now)
        stale = [rid for rid, reservation in self._reservations.items() if reservation.deadline <= now]
        for request_id in stale:
            reservation = self._reservations.pop(request_id)
            for hold in reservation.holds:
                counter = self._counter(hold.counter)
                unreserve(counter, hold.amount)
                counter.spent = saturated(counter.spent + hold.amount)
            self._charged[request_id] = reservation.holds
            while len(self._charged) > self.settled_memory:
                self._charged.popitem(last=False)
        return len(stale)

    async def pending(self) -> int:
        return len(self._reservations)

    def _sweep(self, now: float) -> None:
        """Drop the counters past their lifetime (as Redis expires them: their window plus a day) that nothing
        holds reserved, and the rate-limit buckets whose theoretical arrival time has passed (a full bucket: the
        same as none). Many distinct users or tag values then hold memory for their window, not forever."""
        for name in [n for n, c in self._counters.items() if c.expires is not None and c.expires <= now]:
            if self._counters[name].reserved == 0:
                del self._counters[name]
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]

    def _rate_wait(self, checks: Sequence[Gcra], lenient: Sequence[bool]) -> float:
        now = time.time()
        wait = 0.0
        for check, easy in zip(checks, lenient, strict=True):
            tat = max(self._tat.get(check.key, now), now)
            over = (tat - now) - check.tau_s if easy else (tat + check.increment_s - now) - check.tau_s
            wait = max(wait, over)
        return wait

    def _charge(self, checks: Sequence[Gcra]) -> None:
        now = time.time()
        for check in checks:
            self._tat[check.key] = max(self._tat.get(check.key, now), now) + check.increment_s

    async def generation(self, topic: str, bump: bool = False) -> str:
        return ""  # one process: an announcement has nobody else to reach

    async def raise_spent(self, counter: str, spent: int) -> bool:
        found = self._counters.get(counter)
        if found is None or found.spent >= spent:
            return False
        found.spent = spent
        return True

    async def server_id(self) -> str:
        return ""  # it lives and dies with this process

    async def reservations(self, page: int = RESERVATION_PAGE) -> AsyncGenerator[list[str], None]:
        found = [*self._reservations, *self._charged]  # its ids are in this process anyway (it never restarts)
        for at in range(0, len(found), page):
            yield found[at : at + page]

    async def recount(self, spent: Mapping[str, int], replays: Mapping[str, Mapping[str, int]]) -> Recount:
        dropped = 0
        for request_id, amounts in replays.items():
            reservation = self._reservations.get(request_id)
            holds = reservation.holds if reservation is not None else self._charged.get(request_id, ())
            if holds and request_id not in self._settled and all(hold.counter in spent for hold in holds):
                await self.settle(request_id, {hold.counter: amounts.get(hold.counter, 0) for hold in holds})
                dropped += 1
        return Recount(dropped, [name for name, amount in spent.items() if await self.raise_spent(name, amount)])

    async def close(self) -> None:
        return None
