"""A key revoked or rotated anywhere is forgotten by every process that may hold it in its key cache
(margin.keycache), not within `server.key_cache_ttl_s`:

- through the admin API of a process: that process forgets at once and announces it through the governance
  store (`Store.generation(KEYS, bump=True)`: a fresh token in Redis, published on its channel in the same step);
  the processes sharing that Redis (the workers of `--workers N`, replicas) hear it at once on the channel, or,
  had the message been lost (a dropped connection, Redis restarted), find the token changed at their next
  governance pass (`admission.refresh_s`), as they find a config reload announced;
- from the CLI (or a gateway whose announcement failed): it wrote a `key.revoke` / `key.rotate` row in the
  ledger's audit log in the change's own transaction; every gateway reads the log's last id at each governance
  pass (one index lookup) and the rows appended since (`audit.key_changes`). The CLI also announces through
  the Redis its config names, when it names one.

Nothing here runs on the request path: a lookup the cache answers costs what it did. When neither signal can be
read, the cache's TTL still bounds how long a revoked key works."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from margin import tasks
from margin.errors import MarginError
from margin.governance.redis_scripts import CHANNEL
from margin.governance.redis_store import RedisStore
from margin.governance.store import KEYS, Store
from margin.keycache import KeyCache
from margin.ledger import audit
from margin.logs import failure

log = logging.getLogger("margin.keys")

RETRY_S = 1.0  # a lost subscription is made again this often


class KeyWatch:
    def __init__(self, keys: KeyCache, store: Store, engine: Any) -> None:
        self._keys = keys
        self._store = store
        self._engine = engine  # AsyncEngine of the ledger database
        self._audited = 0  # the audit log's last id seen
        self._token = ""  # the last key announcement seen in the store
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """What is known now (after the governance store answered once), and the subscription to the channel."""
        async with self._engine.connect() as connection:
            self._audited = await connection.run_sync(audit.last_id)
        self._token = await self._store.generation(KEYS)
        if isinstance(self._store, RedisStore):
            self._listener = asyncio.get_running_loop().create_task(self._listen(self._store), name="keywatch")

    async def changed(self) -> None:
        """A key was revoked or rotated, or its sessions ended, through this process: forgotten here at once, and
        announced to the processes sharing the store. An announcement that fails (Redis down) is not an error:
        the others read the audit log's row (sessions ended: their TTL) at their next pass."""
        self._keys.forget()
        with contextlib.suppress(MarginError):  # Redis down: `unavailable` logged the line
            self._token = await self._store.generation(KEYS, bump=True)

    async def follow(self) -> None:
        """A governance pass: forget the cached lookups if the audit log has a key change since the last pass,
        or the store a key announcement (the ledger first: Redis down does not keep it from being read)."""
        self._audited, changed = await self._audit(self._audited)
        if changed:
            self._keys.forget()
        self._heard(await self._store.generation(KEYS))

    async def _audit(self, after: int) -> tuple[int, bool]:
        async with self._engine.connect() as connection:
            found: tuple[int, bool] = await connection.run_sync(audit.key_changes, after)
        return found

    def _heard(self, token: str) -> None:
        if token != self._token:
            self._token = token
            self._keys.forget()

    async def _listen(self, store: RedisStore) -> None:
        """Hear the channel for as long as the process runs. A lost connection is one line in the log (not one
        per retry) and a new subscription every `RETRY_S`; once subscribed again, the token is read once (what
        was announced meanwhile is not lost for the pass's interval)."""
        from redis.exceptions import RedisError

        down = False
        while True:
            pubsub = store.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                if down:
                    log.info("key announcements: subscribed again")
                    self._heard(await store.generation(KEYS))
                down = False
                async for message in pubsub.listen():
                    topic, _, token = str(message.get("data", "")).partition(" ")
                    if message.get("type") == "message" and topic == KEYS:
                        self._heard(token)
            except (RedisError, OSError, MarginError) as exc:
                if not down:
                    log.warning("key announcements are not heard (%s); retrying every %.0f s", failure(exc), RETRY_S)
                down = True
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        await tasks.stop(self._listener)


async def announce(url: str, timeout_s: float = 5.0) -> bool:
    """From the CLI: a key change announced through the Redis at `url`; False when it could not be (the
    gateways read the audit log's row at their next pass)."""
    try:
        store = RedisStore(url)
    except MarginError:
        return False
    try:
        await asyncio.wait_for(store.generation(KEYS, bump=True), timeout_s)
    except (MarginError, TimeoutError):
        return False
    finally:
        await store.close()
    return True
