# -*- test-case-name: tests.test_state_stores -*-
"""The Lua scripts the shared stores run: each check-and-change is one script, so it is atomic
on the server however many processes ask at once.

A script names the keys it reads and writes in ``KEYS`` where it knows them; the few it derives
(an endpoint's unpin generation, a process's lease) start with the deployment's prefix, passed
in ``ARGV``. That is fine on one server (or a primary with replicas), not on Redis Cluster.

Live processes: every process holds ``<prefix>proc:<id>`` (a key with a short TTL it renews);
a count or slot a process holds is kept under its id, and a script that finds the id's key gone
drops it, so a process that died takes what it held with it.
"""

from __future__ import annotations

from olla.state.client import Script

#: KEYS[1] the session; ARGV: idle TTL in ms (0: none), the unpin generation key prefix, the
#: removal generation key prefix. nil: unknown session (or forgotten: its model was deleted
#: from its endpoint since); "": known, not pinned (pinned to an endpoint unpinned since); else
#: the endpoint's name. A known session's idle time starts again.
SESSION_LOOKUP = Script(
    """
local v = redis.call('HMGET', KEYS[1], 'e', 'g', 'm', 'r')
local endpoint = v[1]
if not endpoint then return false end
local ttl = tonumber(ARGV[1])
local answer = ''
if (redis.call('GET', ARGV[2] .. endpoint) or '0') == v[2] then
  local removed = ARGV[3] .. string.len(endpoint) .. ':' .. endpoint .. ':' .. (v[3] or '')
  if (redis.call('GET', removed) or '0') ~= (v[4] or '0') then
    redis.call('DEL', KEYS[1])
    return false
  end
  answer = endpoint
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return answer
"""
)

#: KEYS[1] the session; ARGV: the endpoint name, idle TTL in ms (0: none), the unpin generation
#: key prefix, the session's model, the removal generation key prefix. The pin (a hash: e, g,
#: m, r) carries the endpoint's unpin generation and the model's removal generation there:
#: unpinning an endpoint, or forgetting a model's sessions on it, is one INCR.
SESSION_PIN = Script(
    """
local endpoint = ARGV[1]
local gen = redis.call('GET', ARGV[3] .. endpoint) or '0'
local removed = ARGV[5] .. string.len(endpoint) .. ':' .. endpoint .. ':' .. ARGV[4]
local r = redis.call('GET', removed) or '0'
redis.call('HSET', KEYS[1], 'e', endpoint, 'g', gen, 'm', ARGV[4], 'r', r)
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"""
)

#: KEYS: removal generations (one per model name and endpoint). Every one goes up by one.
SESSIONS_FORGET = Script(
    """
for _, key in ipairs(KEYS) do redis.call('INCR', key) end
return #KEYS
"""
)

#: KEYS: the buckets; ARGV: rate and capacity of each, in turn. One token from each, all or
#: none, on the server's clock. Returns {taken (1/0), level of each as a string}.
RATE_TAKE = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
local taken = true
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  local kept = redis.call('HMGET', key, 't', 's')
  local tokens = capacity
  if kept[1] then
    tokens = math.min(capacity, tonumber(kept[1]) + math.max(0, now - tonumber(kept[2])) * rate)
  end
  levels[i] = tokens
  if tokens < 1 then taken = false end
end
local out = {taken and 1 or 0}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i])
  if taken then levels[i] = levels[i] - 1 end
  redis.call('HSET', key, 't', string.format('%.17g', levels[i]), 's', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil(capacity / rate * 1000) + 1000)
  out[i + 1] = string.format('%.17g', levels[i])
end
return out
"""
)

#: KEYS: each endpoint's load hash (process id -> attempts in flight); ARGV: this process's id,
#: the process lease prefix, then this process's count for each key. Returns, per key, the
#: attempts the other live processes have in flight there.
LOAD_SYNC = Script(
    """
local me = ARGV[1]
local procs = ARGV[2]
local alive = {}
local out = {}
for i, key in ipairs(KEYS) do
  local mine = tonumber(ARGV[2 + i])
  if mine > 0 then redis.call('HSET', key, me, mine) else redis.call('HDEL', key, me) end
  local all = redis.call('HGETALL', key)
  local others = 0
  for j = 1, #all, 2 do
    local p = all[j]
    if p ~= me then
      local live = alive[p]
      if live == nil then
        live = redis.call('EXISTS', procs .. p) == 1
        alive[p] = live
      end
      if live then others = others + tonumber(all[j + 1]) else redis.call('HDEL', key, p) end
    end
  end
  out[i] = others
end
return out
"""
)

#: the held leases of one slot hash, counting only live processes' (dead ones dropped)
_COUNT_SLOTS = """
local function count(key, procs)
  local all = redis.call('HGETALL', key)
  local alive = {}
  local total = 0
  local models = {}
  for j = 1, #all, 2 do
    local lease = all[j]
    local p = string.match(lease, '^(.*)#%d+$')
    local live = alive[p]
    if live == nil then
      live = redis.call('EXISTS', procs .. p) == 1
      alive[p] = live
    end
    if live then
      total = total + 1
      models[all[j + 1]] = (models[all[j + 1]] or 0) + 1
    else
      redis.call('HDEL', key, lease)
    end
  end
  return total, models
end
"""

#: KEYS[1] the endpoint's slot hash (lease id -> model); ARGV: lease id ("<process>#<n>"),
#: model, endpoint cap, model cap, process lease prefix. Returns {1/0, held, held of model}.
SLOT_ACQUIRE = Script(
    _COUNT_SLOTS
    + """
local total, models = count(KEYS[1], ARGV[5])
local mine = models[ARGV[2]] or 0
if total >= tonumber(ARGV[3]) or mine >= tonumber(ARGV[4]) then return {0, total, mine} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {1, total + 1, mine + 1}
"""
)

#: KEYS[1] the slot hash; ARGV: lease id, model, the events channel, the message's start (a
#: JSON array the counts close). Publishes the release when the lease was held.
SLOT_RELEASE = Script(
    """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return {0, -1, -1} end
local models = redis.call('HVALS', KEYS[1])
local of_model = 0
for _, m in ipairs(models) do if m == ARGV[2] then of_model = of_model + 1 end end
redis.call('PUBLISH', ARGV[3], ARGV[4] .. #models .. ',' .. of_model .. ']')
return {1, #models, of_model}
"""
)

#: KEYS: slot hashes; ARGV[1] the process lease prefix. Returns, per key, {held, model,
#: count, model, count, ...} counting live processes only.
SLOT_VIEW = Script(
    _COUNT_SLOTS
    + """
local out = {}
for i, key in ipairs(KEYS) do
  local total, models = count(key, ARGV[1])
  local row = {total}
  for model, n in pairs(models) do
    row[#row + 1] = model
    row[#row + 1] = n
  end
  out[i] = row
end
return out
"""
)

#: KEYS[1] the lease; ARGV: this process's id, TTL in ms. 1 when this process holds it now
#: (taken, or renewed because it held it already).
LEASE_CLAIM = Script(
    """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
)
