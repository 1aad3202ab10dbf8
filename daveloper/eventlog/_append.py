"""The event log's append, one Lua script (see :meth:`daveloper.eventlog.EventLog.append_many`)."""

__all__ = ["APPEND"]

# KEYS: stream, meta hash. ARGV: final ("1"/"0"), retention, TTL seconds, tail channel, writer, batch,
# payload 1..n. Returns the seq of the first payload, or minus the final seq if the scope is already finished.
# A writer ("" for none) numbers its batches 1, 2, 3...: a batch it sends again (a retry after a lost
# reply) is not stored twice; the seq it got the first time is returned.
# One script, so that seq order is stream order even with writers in many
# processes: the stream id *is* the seq, and XADD refuses ids out of order. The
# entries are published on the scope's tail channel in the same script, so
# followers hear them in seq order (message layout in tail.py).
APPEND = """
local mark = ARGV[5] ~= '' and ('w:' .. ARGV[5]) or nil
if mark then
  local done = redis.call('HGET', KEYS[2], mark)
  if done then
    local batch, at = string.match(done, '(%d+) (%d+)')
    if tonumber(batch) >= tonumber(ARGV[6]) then
      return tonumber(at)
    end
  end
end
local final = redis.call('HGET', KEYS[2], 'final')
if final then
  return -tonumber(final)
end
local n = #ARGV - 6
local first = redis.call('HINCRBY', KEYS[2], 'last', n) - n + 1
local sizes = {}
for i = 1, n do
  local seq = first + i - 1
  local payload = ARGV[6 + i]
  if i == n and ARGV[1] == '1' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'p', payload, 'f', '1')
    redis.call('HSET', KEYS[2], 'final', seq)
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'p', payload)
  end
  sizes[i] = #payload
end
if mark then
  redis.call('HSET', KEYS[2], mark, ARGV[6] .. ' ' .. first)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local header = first .. ' ' .. ARGV[1] .. ' ' .. table.concat(sizes, ' ')
redis.call('PUBLISH', ARGV[4], header .. '\\n' .. table.concat(ARGV, '', 7))
return first
"""
