"""The Lua scripts of margin.governance.redis_store, one an operation, so check-and-reserve is atomic across
replicas. Layout (prefix `mgn:`):
  c:{counter}        hash {spent, reserved}, expiring after its window
  r:{request_id}     hash {counter: amount} of an open reservation
  deadlines          zset request_id → deadline (unix s), for the reaper
  reloaded           str: a fresh token per config reload announced (each process re-reads its config when it
                     changes; a count started again from 0 after a restart, and a replica took the reload that
                     brought it back to the count it had seen for no news)
  keys               str: a fresh token per key revoked or rotated (each process forgets its cached key lookups)
  announced          pub/sub channel: "<topic> <token>" as either is set, heard at once (margin.keywatch)
  s:{request_id}     marker of a settled request (expires after a day)
  k:{request_id}     hash {counter: amount} charged by the reaper (a reservation past its deadline)
  reaped             zset request_id → when reaped, for two days (as k:), for the pass after a restart (which
                     reads it and deadlines by ZSCAN, in pages: `reservations`)
  l:{counter}        hash {request_id: amount} settled while the counter was gone, for the seed that makes it again
  g:{key}            GCRA theoretical arrival time (float seconds)
  st:{api key}       zset stream lease (request id) → expiry (unix s): the key's open streams
  up:{api key}       zset upload lease (an id of its own) → expiry: the key's uploads being read
  dl:{api key}       zset download lease → expiry: the key's downloads being sent (margin.governance.slots)
Time comes from Redis' own clock (`TIME`), so replicas with skewed clocks agree.
"""

from __future__ import annotations

from margin.ledger.read.budget import SPENT_CAP

P = "mgn:"
UNSEEDED = -2  # the admit and extend scripts' status when a budget counter is gone
GONE = -3  # the extend script's status when the reservation is no longer open (settled, reaped)
CHANNEL = f"{P}announced"

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"
# a counter held at the most its 64 bits hold (a soft budget seeded at SPENT_CAP from hostile rows) stays there:
# HINCRBY past it fails ("increment or decrement would overflow") and stopped the whole script (a settle lost, the
# reaper stuck on that reservation at every pass); nothing is written before the check, so the field is then set
# to the cap in that direction. Any other error is raised again as HINCRBY's own.
_INCR = f"""
local function incr(key, field, amount)
  amount = tostring(amount)
  local done = redis.pcall('HINCRBY', key, field, amount)
  if type(done) == 'table' and done.err then
    if not string.find(done.err, 'overflow', 1, true) then return redis.call('HINCRBY', key, field, amount) end
    redis.call('HSET', key, field, amount:sub(1, 1) == '-' and '{-SPENT_CAP - 1}' or '{SPENT_CAP}')
  end
end
"""
# amounts reach HINCRBY as the integer strings they are: a Lua number from 1e17 on is written `1e+17`,
# which HINCRBY refuses halfway through a script (Redis does not roll a script back)
_NEG = (
    _INCR + "local function neg(s)\n"  # HINCRBY refuses `-0`
    "  if s == '0' then return s elseif s:sub(1, 1) == '-' then return s:sub(2) end return '-' .. s\n"
    "end\n"
    # a counter that is gone is left gone: the next admit then reconciles it from the ledger (and what settled
    # while it was gone: SETTLE parks it) instead of finding a counter that holds only what settled since it was lost
    "local function add(key, field, amount)\n"
    "  if redis.call('EXISTS', key) == 1 then incr(key, field, amount) end\n"
    "end\n"
    # a hold taken off `reserved`, never below 0: holds that added past the cap were held at it (`incr`), so taking
    # each off in full went below 0 (margin.governance.store.unreserve, the same in this process)
    # an amount taken back off `spent` (a reaper's charge undone): a spent held at the cap stays there (the charge
    # was added to it as nothing; taking it off in full under-counted: margin.governance.store.unspend)
    "local function unspend(key, amount)\n"
    f"  if redis.call('HGET', key, 'spent') ~= '{SPENT_CAP}' then add(key, 'spent', neg(amount)) end\n"
    "end\n"
    "local function unreserve(key, amount)\n"
    "  if redis.call('EXISTS', key) == 0 then return end\n"
    "  incr(key, 'reserved', neg(amount))\n"
    "  local left = redis.call('HGET', key, 'reserved')\n"
    "  if left and left:sub(1, 1) == '-' then redis.call('HSET', key, 'reserved', '0') end\n"
    "end\n"
)

# ADMIT's and EXTEND's reply: {status, wait, then (spent, reserved) of the n counters from KEYS[first + 1]}; and
# their check of a hard hold: no room when spent + reserved + what it adds passes the limit
_COUNTERS = """
local function snapshot(status, wait, first, n)
  local out = {status, tostring(wait)}
  for i = 1, n do
    local c = redis.call('HMGET', KEYS[first + i], 'spent', 'reserved')
    out[#out + 1] = c[1] or '0'  -- as the strings they are: a Lua number is a double (2^63 - 1 came back -2^63)
    out[#out + 1] = c[2] or '0'
  end
  return out
end
local function no_room(key, limit, adds)
  local c = redis.call('HMGET', key, 'spent', 'reserved')
  return (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + adds > tonumber(limit)
end
"""

ADMIT = (
    _NOW
    + _INCR
    + _COUNTERS
    + """
-- KEYS: reservation, settled marker, deadlines, n budget counters, m GCRA keys
-- ARGV: request id, ttl, n, then (limit, amount, hard, expire) per counter, then (increment, tau, lenient) per key
local rid, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local g0, a0 = 3 + n, 3 + 4 * n
local wait = 0
for i = 1, #KEYS - g0 do
  local inc, tau, lenient = tonumber(ARGV[a0 + i * 3 - 2]), tonumber(ARGV[a0 + i * 3 - 1]), ARGV[a0 + i * 3]
  local tat = math.max(tonumber(redis.call('GET', KEYS[g0 + i]) or now), now)
  local over
  if lenient == '1' then over = (tat - now) - tau else over = (tat + inc - now) - tau end
  if over > wait then wait = over end
end
if wait > 0 then return snapshot(-1, wait, 3, n) end
for i = 1, n do  -- every counter was seeded before: one that is gone was lost (nothing is checked without it)
  if redis.call('EXISTS', KEYS[3 + i]) == 0 then return snapshot(-2, 0, 3, n) end
end
local fresh = n > 0 and redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0
if fresh then
  for i = 1, n do
    local b = 4 + (i - 1) * 4
    if ARGV[b + 2] == '1' and no_room(KEYS[3 + i], ARGV[b], tonumber(ARGV[b + 1])) then
      return snapshot(i, 0, 3, n)
    end
  end
  redis.call('ZADD', KEYS[3], now + ttl, rid)  -- first: whatever follows is reaped if the script stops
  for i = 1, n do
    local b = 4 + (i - 1) * 4
    local amount, expire = ARGV[b + 1], tonumber(ARGV[b + 3])
    incr(KEYS[3 + i], 'reserved', amount)
    incr(KEYS[1], KEYS[3 + i], amount)  -- after: the reservation holds what was added
    if expire > 0 and redis.call('TTL', KEYS[3 + i]) < 0 then redis.call('EXPIRE', KEYS[3 + i], expire) end
  end
  redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 86400)
end
for i = 1, #KEYS - g0 do
  local inc, tau = tonumber(ARGV[a0 + i * 3 - 2]), tonumber(ARGV[a0 + i * 3 - 1])
  local tat = math.max(tonumber(redis.call('GET', KEYS[g0 + i]) or now), now) + inc
  redis.call('SET', KEYS[g0 + i], tostring(tat), 'EX', math.ceil(tat - now + tau) + 1)
end
return snapshot(0, 0, 3, n)
"""
)

# release a reservation hash into its counters (used by settle and reap)
_RELEASE = (
    _NEG
    + """
local function release(rkey)
  local held = redis.call('HGETALL', rkey)
  for j = 1, #held, 2 do unreserve(held[j], held[j + 1]) end
  redis.call('DEL', rkey)
end
"""
)

# an open reservation's holds set (margin.governance.store.Store.extend): every hold or none. Each amount is what the
# reservation is to hold on that counter, not a change: a call run again (its reply lost, the caller unsure whether
# it ran) changes nothing more. A hard hold that grows is checked; one whose counter is gone checks nothing and
# returns UNSEEDED (the caller seeds it again, as for ADMIT); a soft one is set without a check (soft budgets may
# settle past their reservation), a gone counter left gone (the next seed reads the ledger)
EXTEND = (
    _NEG
    + _COUNTERS
    + f"""
-- KEYS: reservation, n budget counters; ARGV: n, then (limit, amount, hard) per counter
local n = tonumber(ARGV[1])
if n > 0 and redis.call('EXISTS', KEYS[1]) == 0 then return snapshot({GONE}, 0, 1, n) end  -- settled or reaped
for i = 1, n do
  local b = 2 + (i - 1) * 3
  local held = tonumber(redis.call('HGET', KEYS[1], KEYS[1 + i]) or '0')
  local adds = tonumber(ARGV[b + 1]) - held
  if ARGV[b + 2] == '1' and adds > 0 then
    if redis.call('EXISTS', KEYS[1 + i]) == 0 then return snapshot({UNSEEDED}, 0, 1, n) end
    if no_room(KEYS[1 + i], ARGV[b], adds) then return snapshot(i, 0, 1, n) end
  end
end
for i = 1, n do
  local key, amount = KEYS[1 + i], ARGV[3 + (i - 1) * 3]
  local held = redis.call('HGET', KEYS[1], key) or '0'
  if held ~= amount then  -- the old hold off `reserved`, the new one on (exact: HINCRBY of the integer strings)
    unreserve(key, held)
    if amount ~= '0' then add(key, 'reserved', amount) end
    redis.call('HSET', KEYS[1], key, amount)  -- released, or charged by the reaper, with the rest of the reservation
  end
end
return snapshot(0, 0, 1, n)
"""
)

# a spend whose counter is gone is parked (l:{counter}) for the seed that makes it again: that seed reads the
# ledger, which may not have the row yet (it waits in an outbox, maybe another replica's)
SETTLE = (
    _NOW
    + _RELEASE
    + """
-- KEYS: reservation, settled marker, deadlines, reaper's charge, reaped, n counters, n parked, m GCRA keys
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', 86400) == false then return 0 end
release(KEYS[1])
local charged = redis.call('HGETALL', KEYS[4])
for j = 1, #charged, 2 do unspend(charged[j], charged[j + 1]) end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[3], ARGV[1])
if #charged > 0 then redis.call('ZREM', KEYS[5], ARGV[1]) end
local n = tonumber(ARGV[2])
for i = 1, n do
  if redis.call('EXISTS', KEYS[5 + i]) == 1 then
    incr(KEYS[5 + i], 'spent', ARGV[2 + i])
  elseif ARGV[2 + i] ~= '0' then
    redis.call('HSET', KEYS[5 + n + i], ARGV[1], ARGV[2 + i])
    redis.call('EXPIRE', KEYS[5 + n + i], 86400)
  end
end
for i = 6 + 2 * n, #KEYS do
  local tat = math.max(tonumber(redis.call('GET', KEYS[i]) or now), now) + tonumber(ARGV[i - 3 - n])
  redis.call('SET', KEYS[i], tostring(tat), 'EX', math.ceil(tat - now) + 120)
end
return 1
"""
)

# a reservation past its deadline is charged at its reserved amount (kept as k:{rid} for a late settle)
REAP = (
    _NOW
    + _NEG
    + """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, rid in ipairs(stale) do
  local rkey, kkey = ARGV[1] .. 'r:' .. rid, ARGV[1] .. 'k:' .. rid
  local held = redis.call('HGETALL', rkey)
  for j = 1, #held, 2 do
    unreserve(held[j], held[j + 1])
    add(held[j], 'spent', held[j + 1])
  end
  if #held > 0 then
    redis.call('RENAME', rkey, kkey)
    redis.call('EXPIRE', kkey, 172800)
    redis.call('ZADD', KEYS[2], now, rid)
  end
  redis.call('ZREM', KEYS[1], rid)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 172800)
return #stale
"""
)

RAISE = """
local spent = redis.call('HGET', KEYS[1], 'spent')
if spent and tonumber(spent) < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'spent', ARGV[1]) return 1 end
return 0
"""

# after a restart from a snapshot (governance.service), in one step: the reservations of requests the ledger
# has rows for (the snapshot was taken before they settled, so their settle is lost; the reaper would charge
# their whole reservation) are settled again with their rows' cost, their reaper's charge undone, when each of
# their counters is one of those raised here; then the counters are raised to the ledger's spend
RECOUNT = (
    _NEG
    + """
-- KEYS: deadlines, reaped, n counters; ARGV: prefix, n, n ledger spends, then per request the ledger has a row
-- for: its id and n amounts (what its settle adds to each of the n counters it holds)
local n = tonumber(ARGV[2])
local raised = {}
for i = 1, n do raised[KEYS[2 + i]] = true end
local dropped = 0
local function covers(pairs_)
  for j = 1, #pairs_, 2 do if not raised[pairs_[j]] then return false end end
  return true
end
for i = 3 + n, #ARGV, n + 1 do
  local rkey, kkey, skey = ARGV[1] .. 'r:' .. ARGV[i], ARGV[1] .. 'k:' .. ARGV[i], ARGV[1] .. 's:' .. ARGV[i]
  local held, charged = redis.call('HGETALL', rkey), redis.call('HGETALL', kkey)
  if #held + #charged > 0 and redis.call('EXISTS', skey) == 0 and covers(held) and covers(charged) then
    local holds = {}
    for j = 1, #held, 2 do unreserve(held[j], held[j + 1]); holds[held[j]] = true end
    for j = 1, #charged, 2 do unspend(charged[j], charged[j + 1]); holds[charged[j]] = true end
    for c = 1, n do  -- the lost settle, replayed
      if holds[KEYS[2 + c]] then add(KEYS[2 + c], 'spent', ARGV[i + c]) end
    end
    redis.call('DEL', rkey, kkey)
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('SET', skey, '1', 'EX', 86400)  -- a settle still on its way is the row already counted
    dropped = dropped + 1
  end
end
local up = {}
for i = 1, n do
  local spent = redis.call('HGET', KEYS[2 + i], 'spent')
  if spent and tonumber(spent) < tonumber(ARGV[2 + i]) then
    redis.call('HSET', KEYS[2 + i], 'spent', ARGV[2 + i])
    up[#up + 1] = i - 1
  end
end
return {dropped, up}
"""
)

# KEYS: counter, its parked spends; ARGV: the ledger's spend, expiry, the parked requests the ledger counted
SEED = (
    _INCR
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', 0)
local counted = {}
for i = 3, #ARGV do counted[ARGV[i]] = true end
local parked = redis.call('HGETALL', KEYS[2])
for j = 1, #parked, 2 do
  if not counted[parked[j]] then incr(KEYS[1], 'spent', parked[j + 1]) end
end
redis.call('DEL', KEYS[2])
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""
)

TAKE_SLOT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""
)

RENEW_SLOTS = (
    _NOW
    + """
local lost = {}
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i + 1]) == 0
     and redis.call('ZSCORE', KEYS[i], ARGV[i + 1]) == false then
    lost[#lost + 1] = i - 1
  end
  redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[1])) + 1)
end
return lost
"""
)

RESTORE_SLOTS = (
    _NOW
    + """
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'NX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], math.ceil(tonumber(ARGV[1])) + 1)
end
return #KEYS
"""
)
