"""The Lua scripts of the Redis signaling bus (``redisbus.py``); each runs atomically in Redis.

Every script gets the cluster's key prefix (``P`` = ``<prefix>:``) and this node's id (``ME``)
as its first two arguments; the bus's own keys are under ``K`` = ``P sig:``. Time is Redis's
own (``TIME``), so that nodes whose clocks differ agree on when a kept message expires.

Keys:

- ``P node:<node>``: a node's heartbeat, the cluster's (``cluster/redisbus.py``). A presence entry
  of a node whose heartbeat is gone counts as absent and is removed when met.
- ``K ch:<channel ARN>``: presence (hash): field ``m`` (the master) or ``v:<ClientId>`` →
  ``<node>|<connection id>``; PX refreshed by every node that holds one of its connections.
- ``K q:<channel ARN>|<field>``: the messages kept for an absent participant (list of JSON
  ``{"x": expiry ms, "o": origin, "t": text}``, oldest first, at most ``max_per`` entries).
- ``K qbytes`` (hash list key → bytes), ``K qexp`` (sorted set list key → latest expiry),
  ``K qtotal`` (bytes kept in all): the accounting behind the byte budget and pruning.
- ``K hold:<channel ARN>|<field>``: ``<node>|<id>`` of a stand-in that takes the messages for a
  participant with no connection (a SendAlexaOfferToMaster call waiting for its answer).
- pub/sub ``K to:<node>``: messages for one node; ``K all``: for every node.
"""

from __future__ import annotations

_COMMON = """
local P = ARGV[1]
local K = P .. 'sig:'
local ME = ARGV[2]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local live = {}
local function alive(node)
  if node == ME then return true end
  if live[node] == nil then live[node] = redis.call('EXISTS', P .. 'node:' .. node) == 1 end
  return live[node]
end
local function split(v)
  local i = string.find(v, '|', 1, true)
  return string.sub(v, 1, i - 1), string.sub(v, i + 1)
end
local function forget(q)
  local b = tonumber(redis.call('HGET', K .. 'qbytes', q) or '0')
  redis.call('DEL', q)
  redis.call('HDEL', K .. 'qbytes', q)
  redis.call('ZREM', K .. 'qexp', q)
  if b ~= 0 then redis.call('DECRBY', K .. 'qtotal', b) end
end
local function load(q, now)
  local out = {}
  for _, raw in ipairs(redis.call('LRANGE', q, 0, -1)) do
    local it = cjson.decode(raw)
    if it.x > now then out[#out + 1] = it end
  end
  return out
end
local function store(q, items)
  local old = tonumber(redis.call('HGET', K .. 'qbytes', q) or '0')
  redis.call('DEL', q)
  if #items == 0 then
    redis.call('HDEL', K .. 'qbytes', q)
    redis.call('ZREM', K .. 'qexp', q)
    if old ~= 0 then redis.call('DECRBY', K .. 'qtotal', old) end
    return
  end
  local bytes, exp = 0, 0
  for _, it in ipairs(items) do
    redis.call('RPUSH', q, cjson.encode(it))
    bytes = bytes + #it.t
    if it.x > exp then exp = it.x end
  end
  redis.call('HSET', K .. 'qbytes', q, bytes)
  redis.call('ZADD', K .. 'qexp', exp, q)
  redis.call('INCRBY', K .. 'qtotal', bytes - old)
  -- A backstop only: pruning (which keeps the accounting) normally removes it first.
  redis.call('PEXPIREAT', q, exp + 60000)
end
local function prune(now, limit)
  local keys = redis.call('ZRANGEBYSCORE', K .. 'qexp', '-inf', now, 'LIMIT', 0, limit)
  for _, q in ipairs(keys) do forget(q) end
  return #keys
end
"""

# KEYS: presence hash, pending list. ARGV: P, ME, field, connection id, max viewers (0: none),
# presence TTL ms, channel ARN.
# -> {'limit'} or {'ok', replaced node, replaced connection, kept texts...}
ATTACH = (
    _COMMON
    + """
local field, conn, cap = ARGV[3], ARGV[4], tonumber(ARGV[5])
local old_node, old_conn = '', ''
local old = redis.call('HGET', KEYS[1], field)
if old then
  old_node, old_conn = split(old)
  if not alive(old_node) then
    redis.call('HDEL', KEYS[1], field)
    old_node, old_conn = '', ''
  end
end
if old_conn == '' and cap > 0 and string.sub(field, 1, 2) == 'v:' then
  local all = redis.call('HGETALL', KEYS[1])
  local n = 0
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'v:' then
      local node = split(all[i + 1])
      if alive(node) then n = n + 1 else redis.call('HDEL', KEYS[1], all[i]) end
    end
  end
  if n >= cap then return {'limit'} end
end
redis.call('HSET', KEYS[1], field, ME .. '|' .. conn)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
if old_conn ~= '' and old_node ~= ME then
  redis.call('PUBLISH', K .. 'to:' .. old_node,
    cjson.encode({op = 'go_away', arn = ARGV[7], conn = old_conn}))
end
local out = {'ok', old_node, old_conn}
local items = load(KEYS[2], now_ms())
for _, it in ipairs(items) do out[#out + 1] = it.t end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('HEXISTS', K .. 'qbytes', KEYS[2]) == 1 then
  forget(KEYS[2])
end
return out
"""
)

# KEYS: presence hash, pending list. ARGV: P, ME, field, connection id.
# -> the kept texts, taken, if that connection is current (else nothing)
TAKE = (
    _COMMON
    + """
if redis.call('HGET', KEYS[1], ARGV[3]) ~= ME .. '|' .. ARGV[4] then return {} end
local out = {}
for _, it in ipairs(load(KEYS[2], now_ms())) do out[#out + 1] = it.t end
forget(KEYS[2])
return out
"""
)

# KEYS: presence hash. ARGV: P, ME, field, connection id. -> 1 if it was current (and is gone)
DETACH = (
    _COMMON
    + """
if redis.call('HGET', KEYS[1], ARGV[3]) == ME .. '|' .. ARGV[4] then
  redis.call('HDEL', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
)

# KEYS: presence hash. ARGV: P, ME, field. -> '<node>|<connection>' or false
LOCATE = (
    _COMMON
    + """
local v = redis.call('HGET', KEYS[1], ARGV[3])
if v and alive((split(v))) then return v end
return false
"""
)

# KEYS: presence hash. ARGV: P, ME. -> live viewers
VIEWERS = (
    _COMMON
    + """
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'v:' and alive((split(all[i + 1]))) then n = n + 1 end
end
return n
"""
)

# KEYS: presence hash, pending list, stand-in. ARGV: P, ME, field, text, origin, is offer,
# TTL ms, absolute expiry ms (0: now + TTL), connection id to skip ('' for none), max kept per
# participant, max kept bytes in all, channel ARN.
# -> {'local', connection} (current here: deliver it yourself), {'sent'} (published to the node
# holding it), {'buffered'}, {'dropped'} or {'full'}
DELIVER = (
    _COMMON
    + """
local field, text, origin = ARGV[3], ARGV[4], ARGV[5]
local is_offer, ttl, exp = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
local skip, max_per, max_bytes = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local now = now_ms()
if exp == 0 and ttl > 0 then exp = now + ttl end
local cur = redis.call('HGET', KEYS[1], field)
if cur then
  local node, conn = split(cur)
  if conn ~= skip and alive(node) then
    if node == ME then return {'local', conn} end
    local body = {op = 'deliver', arn = ARGV[12], p = field, conn = conn, t = text, o = origin,
      f = ARGV[6], x = exp}
    local n = redis.call('PUBLISH', K .. 'to:' .. node, cjson.encode(body))
    if n > 0 then return {'sent'} end
  end
end
local w = redis.call('GET', KEYS[3])
if w then
  local node, conn = split(w)
  if conn ~= skip and alive(node) then
    if node == ME then return {'local', conn} end
    local body = {op = 'deliver', arn = ARGV[12], p = field, conn = conn, t = text, o = origin,
      f = ARGV[6], x = 0}
    if redis.call('PUBLISH', K .. 'to:' .. node, cjson.encode(body)) > 0 then return {'sent'} end
  end
end
if exp <= now then return {'dropped'} end
local raw = redis.call('LRANGE', KEYS[2], 0, -1)
local items, changed, latest = {}, false, exp
for _, r in ipairs(raw) do
  local it = cjson.decode(r)
  -- Expired, or superseded by this newer offer from the same sender.
  if it.x <= now or (is_offer and it.o == origin) then
    changed = true
  else
    items[#items + 1] = it
    if it.x > latest then latest = it.x end
  end
end
local old = tonumber(redis.call('HGET', K .. 'qbytes', KEYS[2]) or '0')
local bytes = 0
for _, it in ipairs(items) do bytes = bytes + #it.t end
local total = tonumber(redis.call('GET', K .. 'qtotal') or '0') - old + bytes
if total + #text > max_bytes then
  prune(now, 1000)
  total = tonumber(redis.call('GET', K .. 'qtotal') or '0')
  old = tonumber(redis.call('HGET', K .. 'qbytes', KEYS[2]) or '0')
  if total - old + bytes + #text > max_bytes then return {'full'} end
end
local item = {x = exp, o = origin, t = text}
if changed or #items >= max_per then
  items[#items + 1] = item
  while #items > max_per do table.remove(items, 1) end
  store(KEYS[2], items)
  return {'buffered'}
end
-- Nothing to drop: append, and account for it.
redis.call('RPUSH', KEYS[2], cjson.encode(item))
redis.call('HSET', K .. 'qbytes', KEYS[2], old + #text)
redis.call('ZADD', K .. 'qexp', latest, KEYS[2])
redis.call('INCRBY', K .. 'qtotal', #text)
redis.call('PEXPIREAT', KEYS[2], latest + 60000)
return {'buffered'}
"""
)

# KEYS: stand-in key. ARGV: P, ME, '<node>|<connection>'. Deletes it if it is still that one.
RELEASE = (
    _COMMON
    + """
if redis.call('GET', KEYS[1]) == ARGV[3] then redis.call('DEL', KEYS[1]) end
return 1
"""
)

# ARGV: P, ME, limit. -> lists forgotten
PRUNE = (
    _COMMON
    + """
return prune(now_ms(), tonumber(ARGV[3]))
"""
)

# KEYS: pending list. ARGV: P, ME.
FORGET = (
    _COMMON
    + """
forget(KEYS[1])
return 1
"""
)

__all__ = [
    "ATTACH",
    "DELIVER",
    "DETACH",
    "FORGET",
    "LOCATE",
    "PRUNE",
    "RELEASE",
    "TAKE",
    "VIEWERS",
]
