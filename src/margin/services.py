"""Everything the gateway needs, built once from the settings (in the app's lifespan) and reached through
`app.state.services`. No module-level state."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa

from margin.api.audit import DeniedWrites
from margin.api.client import StallWatch
from margin.backends.registry import BackendRegistry
from margin.cache.exact import CacheStore, MemoryCache, RedisCache, SqliteCache
from margin.cache.layer import SemanticLayer
from margin.config import Settings, config_hash, load_settings
from margin.dashboard.auth import Sessions
from margin.economics.carbon import GridTable
from margin.economics.meter import Meter
from margin.economics.prices import PriceBook
from margin.economics.rates import unit_rates
from margin.errors import ConfigError, InternalError, MarginError, Overloaded
from margin.gates import KeyedGate
from margin.governance.service import Governance
from margin.governance.slots import DOWNLOADS, UPLOADS
from margin.guard.pseudonym import UserPseudonyms
from margin.keycache import KeyCache
from margin.keywatch import KeyWatch
from margin.ledger import audit, db, rollup, stored, tag_index
from margin.ledger.outbox import Outbox
from margin.logs import failure
from margin.pipeline.flow import Flow, Parts, compose
from margin.pipeline.steps.settle import Settle
from margin.routing.breaker import Breakers
from margin.routing.policy import RoutePolicy
from margin.routing.prefer import Option
from margin.telemetry import Telemetry
from margin.telemetry.metrics import MULTIPROC_ENV, Metrics
from margin.telemetry.traces import Traces, provider_names
from margin.types import Backend, Target

log = logging.getLogger("margin")
P = ParamSpec("P")
T = TypeVar("T")


def _check_regions(settings: Settings, grid: GridTable) -> None:
    for name, region in settings.regions.items():
        if region.grid_zone and region.grid_g_per_kwh is None and grid.get(region.grid_zone) is None:
            raise ConfigError(
                f"region {name!r}: grid_zone {region.grid_zone!r} is not in the bundled table "
                "(use an ISO alpha-3 code such as FRA, or gcp:<region>, or set grid_g_per_kwh)"
            )


def make_cache(settings: Settings) -> CacheStore:
    url = settings.cache.redis or settings.storage.redis
    if url:
        return RedisCache(url)
    memory = MemoryCache(settings.cache.max_bytes)
    database = db.sqlite_file(settings.storage.ledger)
    return SqliteCache(database, memory, settings.cache.max_disk_bytes) if database is not None else memory


def make_semantic(settings: Settings, cache: CacheStore) -> SemanticLayer | None:
    """The semantic cache when enabled; with the exact cache in Redis, its additions shared through that Redis."""
    if not settings.cache.semantic.enabled:
        return None
    return SemanticLayer(settings.cache, redis=cache.client if isinstance(cache, RedisCache) else None)


def make_telemetry(settings: Settings) -> Telemetry:
    """Metrics unless turned off (multiprocess files when a supervisor named their directory), traces only
    when an OTLP endpoint is configured."""
    config = settings.telemetry
    metrics = Metrics(os.environ.get(MULTIPROC_ENV)) if config.metrics else None
    traces = None
    if config.otlp_endpoint:
        on_drop = None if metrics is None else (lambda count: metrics.drop("traces", count))
        traces = Traces(config, provider_names(settings.backends), on_drop)
    return Telemetry(metrics, traces)


class Services:
    def __init__(
        self,
        settings: Settings,
        registry: BackendRegistry | None = None,
        config_path: Path | None = None,
        config_hash_: str | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        # a worker of `--workers N` keeps its supervisor's hash (the embedded Redis it was given is no config)
        self.config_hash = config_hash_ or config_hash(settings)
        # the ledger database's two engines, owned here: async for the request path, sync for admin work
        # and every read (margin.ledger.read), in worker threads
        self.engine = db.make_async_engine(settings.storage.ledger)
        self._sync_engine = db.make_sync_engine(settings.storage.ledger)
        # the threads of that admin work and those reads (`read`): their own, so a slow read (a large ledger, a
        # locked table) never holds one of asyncio's default threads, which the request path needs (the
        # router's scorer, the tokenizer of long prompts, the text of long streams)
        self._reads = ThreadPoolExecutor(settings.server.read_threads, thread_name_prefix="margin-read")
        # a key that is no operator's (its own usage, its team's dashboard) runs one of those reads at a time, so
        # one key's scans of its history never take every read thread from the operators and the other keys
        self.key_reads = KeyedGate(running=1, waiting=4, what="usage or dashboard read")
        # denied attempts at admin changes recorded in the audit log: bounded per address and minute
        self.audit_denials = DeniedWrites(settings.audit.denied_per_minute, settings.audit.denied_total_per_minute)
        # the ledger's rows, before each response completes; its ingester's SQL runs in a child process (or a
        # thread) with a connection of its own (a large page cache, a temporary staging table)
        self.outbox = Outbox.from_settings(settings.storage)
        server = settings.server
        self.keys = KeyCache(self.engine, ttl_s=server.key_cache_ttl_s, max_entries=server.key_cache_entries)
        self.sessions = Sessions.from_config(settings.server)
        self.grid = GridTable.bundled()
        _check_regions(settings, self.grid)
        self.prices = PriceBook()
        self.meter = Meter(settings, self.grid, self.prices)
        registry = registry or BackendRegistry()
        self.backends: dict[str, Backend] = {
            name: registry.create(name, config, self) for name, config in settings.backends.items()
        }
        self.targets = self._targets()
        self.governance = Governance(settings, self.engine)
        self.governance.reloaded_elsewhere = functools.partial(self.reload, announce=False)
        self.governance.flush_ledger = self.outbox.caught_up
        self.governance.flush_outbox = self.outbox.flush_ok  # the store's restart: waits for a pass
        # a key revoked or rotated elsewhere is forgotten here at once (Redis) or at the next governance pass
        self.keywatch = KeyWatch(self.keys, self.governance.store, self.engine)
        self.governance.follow_keys = self.keywatch.follow
        # a file download holds its file (up to `batches.max_file_bytes`) until its client has read it: two at a
        # time per key, the next refused at once, so a key whose client stops reading cannot fill the memory
        self.downloads = self._file_gate(DOWNLOADS, running=2, waiting=0, what="file download")
        # an upload holds its file (up to `batches.max_file_bytes`, and its scan's copies) until it is stored:
        # two read at a time per key, four more wait unread, the next refused at once (without it one key's
        # 6 uploads of 40 MB at once took the gateway from 180 to 540 MB, and nothing bounded how many)
        self.uploads = self._file_gate(UPLOADS, running=2, waiting=4, what="file upload")
        self.cache = make_cache(settings)
        self.semantic = make_semantic(settings, self.cache)
        self.route_policy = RoutePolicy(settings.routes, rates=self._rates)
        admission = settings.admission
        self.breakers = Breakers(admission.breaker_failures, admission.breaker_cooldown_s)
        self.telemetry = make_telemetry(settings)
        self._background: set[asyncio.Task[Any]] = set()
        self.flow = self._flow()
        self.stalls = StallWatch(settings.server.stream_write_timeout_s)
        self.started_at = time.time()

    def _file_gate(self, pool: str, running: int, waiting: int, what: str) -> KeyedGate:
        """A per-key gate on files in flight whose `running` places are the key's across every worker and
        replica when they share a Redis (leases, margin.governance.slots; else each process would give a key
        its own two); `waiting` stays per process (margin.gates)."""
        shared = self.governance.shared_slots(pool, running, what)
        return KeyedGate(running=running, waiting=waiting, what=what, shared=shared)

    def _flow(self) -> Flow:
        self.settle = Settle(
            self.outbox,
            self.config_hash,
            self.governance,
            self.spawn,
            UserPseudonyms.from_env(self.settings.guard.user_hash_key_env),
            self.telemetry,
        )
        parts = Parts(self.targets, self.governance, self.meter, self.breakers, self.route_policy, self.outbox)
        return compose(self.settings, self.settle, parts, self.cache, self.semantic)

    def _targets(self) -> dict[str, Target]:
        targets: dict[str, Target] = {}
        for public, model in self.settings.models.items():
            region = self.settings.backends[model.backend].region
            jurisdiction = self.settings.region(region).jurisdiction
            target = Target(public, model, model.backend, self.backends[model.backend], region, jurisdiction)
            for name in (public, *model.aliases):
                targets[name] = target
        return targets

    def _rates(self, target: Target) -> Option:
        """gCO2e and $ per token of a deployment now (lowest-carbon / lowest-cost routes)."""
        rates = unit_rates(self.meter, target.public, target.model, None, self.settings.admission.reserve_tokens_per_s)
        return Option(rates.g_per_token, rates.usd_per_token)

    async def start(self) -> None:
        await asyncio.to_thread(db.upgrade, self.settings.storage.ledger)
        await self.meter.curves.refresh()  # a curve URL is fetched before the first request
        await asyncio.to_thread(self._check_rollup_keys)
        if (days := self.settings.audit.retention_days) is not None:
            await asyncio.to_thread(audit.prune, self._sync_engine, days)
        await asyncio.to_thread(stored.prune, self._sync_engine)  # expired stored responses (responses.store)
        await self.keys.start(self.settings.server.host)
        self.outbox.start()
        self.telemetry.start(self.telemetry_state)
        await self.governance.start()
        await self.keywatch.start()
        if self.semantic is not None:
            await self.semantic.start()
        await asyncio.gather(*(backend.start() for backend in self.backends.values()))

    def _check_rollup_keys(self) -> None:
        with self._sync_engine.connect() as connection:
            rolled = rollup.rolled_up_keys(connection)
            indexed = tag_index.existing(connection)
        if set(rolled) != set(self.settings.tags.rollup_keys):
            log.warning(
                "tags.rollup_keys is %s but the rollups hold %s: run `margin db rebuild-rollups` (until then "
                "groupings by the other keys read ledger rows)",
                sorted(self.settings.tags.rollup_keys),
                sorted(rolled),
            )
        self._check_tag_indexes(indexed)

    def _check_tag_indexes(self, indexed: set[str]) -> None:
        """The ledger's tag-value indexes (margin.ledger.tag_index) against `tags.indexed_keys`, and the config's
        per-tag-value budgets whose key has none (each of their counters is rebuilt from its whole window)."""
        wanted = {tag_index.name(key) for key in self.settings.tags.indexed_keys}
        if indexed != wanted:
            log.warning(
                "tags.indexed_keys is %s but the ledger's tag indexes are %s: run `margin db index-tags`",
                sorted(self.settings.tags.indexed_keys),
                sorted(indexed),
            )
        scans = sorted({b.name for b in self.settings.budgets if b.scope.kind == "tag" and
                        tag_index.name_of(b.scope.value or "") not in indexed})  # fmt: skip
        if scans:
            log.warning(
                "budgets %s are per value of a tag key the ledger has no index for: each of their counters is rebuilt "
                "by reading every row of its window (add the key to tags.indexed_keys, run `margin db index-tags`)",
                scans,
            )

    def telemetry_state(self) -> dict[str, Any]:
        """What the metrics read besides requests: circuits, faults and retries per backend, the ledger outbox."""
        backends = {}
        for name, backend in self.backends.items():
            breaker = self.breakers.describe(name)
            retries = backend.health().get("retries", 0)
            backends[name] = {"state": breaker["state"], "faults": breaker["faults"], "retries": retries}
        depth = self.outbox.depth
        pending = {"pending_rows": depth.rows, "pending_bytes": depth.bytes}
        state = {"backends": backends, **pending, "refused_backlogged": self.settle.refused}
        if self.semantic is not None and self.semantic.feed is not None:
            state["semantic_shared"] = self.semantic.feed.counts()
        return state

    def sync_engine(self) -> sa.Engine:
        """The synchronous engine: ledger writes, reads and admin work, run in threads."""
        return self._sync_engine

    async def reload(self, announce: bool = True) -> bool:
        """Re-read governance rules (and the config file's, if the gateway was started from one). `announce`:
        the other processes sharing the governance store re-read theirs too (they are told with announce off)."""
        changed = False
        if self.config_path is not None:
            try:
                fresh = await asyncio.to_thread(load_settings, self.config_path)
            except ConfigError:
                log.exception("config reload from %s failed; keeping the running rules", self.config_path)
                raise
            self.governance.reload(fresh)
            changed = True
        await self.governance.refresh()
        log.info("governance rules reloaded (config file: %s)", changed)
        if announce:
            try:
                await self.governance.announce_reload()
            except MarginError:  # this process has reloaded; the others have not been told
                log.warning("the other processes sharing the governance store were not told of this reload")
        return changed

    async def audited_reload(self, origin: audit.Origin) -> bool:
        """`reload`, recorded in the audit log (the rule counts before and after) before it is acknowledged: a
        reload the log could not record is an error (500), though it took effect. A config file that does not
        load on SIGHUP is recorded as failed here (over HTTP, by the admin API, like every failed attempt)."""
        before = self.rule_counts()
        try:
            changed = await self.reload()
        except ConfigError as exc:
            if origin.source != "reload":
                raise
            failed = audit.Change(
                "config.reload",
                self._config_name(),
                "failed",
                before,
                {"error": exc.code, "message": exc.message[:500]},
            )
            with contextlib.suppress(InternalError):  # the answer is the config's error either way
                await self._record(origin, failed)
            raise
        after = {**self.rule_counts(), "config_file_reread": changed}
        await self._record(origin, audit.Change("config.reload", self._config_name(), before=before, after=after))
        return changed

    async def _record(self, origin: audit.Origin, change: audit.Change) -> None:
        try:
            await self.read(audit.write, self._sync_engine, origin, change)
        except Exception as exc:
            log.exception("the audit log did not record %s", change.action)
            raise InternalError(f"{change.action} took effect but the audit log could not record it") from exc

    def rule_counts(self) -> dict[str, int]:
        rules = self.governance.rules
        return {"budgets": len(rules.budgets), "limits": len(rules.limits), "flags": len(rules.flags)}

    def _config_name(self) -> str | None:
        return str(self.config_path) if self.config_path is not None else None

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run work that must finish even if its caller is cancelled (e.g. settling a closed stream)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for background work (settlements of finished requests)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def read(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`function(*args, **kwargs)` on the read threads: the dashboard's, the admin API's and feedback's
        database work."""
        call = functools.partial(function, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reads, call)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
            # the database is down, restarting, locked or its pool exhausted: retryable, not a crash (before: a
            # 500 and a traceback on /admin/budgets while PostgreSQL restarted)
            log.warning("a ledger read failed: %s", failure(exc))
            raise Overloaded(
                "the ledger database cannot be read now; retry shortly",
                code="ledger_unavailable",
                headers={"retry-after": "1"},
            ) from exc

    async def close(self) -> None:
        await self.stalls.close()
        await self.drain()
        for name, backend in self.backends.items():
            try:
                await backend.close()
            except Exception:
                log.exception("closing backend %s failed", name)
        await self.outbox.close()
        await self.telemetry.close()
        await self.keywatch.close()
        await self.governance.close()
        if self.semantic is not None:
            await self.semantic.stop()  # before the Redis client it reads with closes
        await self.cache.close()
        for step in self.flow.steps:
            closer = getattr(step, "close", None)  # steps holding a worker thread (guard)
            if callable(closer):
                closer()
        if self.semantic is not None:
            self.semantic.close()
        self._reads.shutdown(wait=False, cancel_futures=True)
        await self.engine.dispose()
        self._sync_engine.dispose()
