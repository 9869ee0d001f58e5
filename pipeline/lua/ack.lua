-- A worker's acknowledgement of a batch it committed (appview.indexing.consumer).
-- Acknowledges the batch and counts, in cluster:metrics and the "indexed" throughput buckets, only the
-- entries this call acknowledged (XACK returned 1): an entry committed twice (a redelivery after a crash
-- between commit and ack, or a claim of a slow worker's entry) is counted once.
-- KEYS: stream, metrics, second bucket, minute bucket, dead letters, latency histogram.
-- ARGV: group, n, m, dead-letter maxlen, second TTL, minute TTL, then n x (id, type, errors, latency bucket, reason:
-- "" or why a commit was not applied, counted as errors:<reason>; filtered: record writes of collections that
-- COLLECTION_FILTERS leaves out, counted in "filtered" once there are some; out of scope: 1 for an event of a
-- repository LIVE_SCOPE leaves out, counted in "outOfScope" once there are some), then
-- m x (id, type, error, worker, failed_at, then the entry's fields as name/value pairs, count first), then the
-- event types cluster:metrics counts: each of them, totalEvents and errors exist from the first call, at 0.
local group = ARGV[1]
local n = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local counts = {}
local total = 0
local errors = 0
local filtered = 0
local out_of_scope = 0
local latencies = {}
local i = 7
for _ = 1, n do
  if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then
    total = total + 1
    errors = errors + tonumber(ARGV[i + 2])
    counts[ARGV[i + 1]] = (counts[ARGV[i + 1]] or 0) + 1
    if ARGV[i + 3] ~= '' then latencies[ARGV[i + 3]] = (latencies[ARGV[i + 3]] or 0) + 1 end
    if ARGV[i + 4] ~= '' then
      local reason = 'errors:' .. ARGV[i + 4]
      counts[reason] = (counts[reason] or 0) + 1
    end
    filtered = filtered + tonumber(ARGV[i + 5])
    out_of_scope = out_of_scope + tonumber(ARGV[i + 6])
  end
  i = i + 7
end
for _ = 1, m do
  local nfields = tonumber(ARGV[i + 5])
  if redis.call('XACK', KEYS[1], group, ARGV[i]) == 1 then
    local entry = {'XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*'}
    for j = i + 6, i + 5 + nfields * 2 do entry[#entry + 1] = ARGV[j] end
    entry[#entry + 1] = 'error'
    entry[#entry + 1] = ARGV[i + 2]
    entry[#entry + 1] = 'worker'
    entry[#entry + 1] = ARGV[i + 3]
    entry[#entry + 1] = 'failed_at'
    entry[#entry + 1] = ARGV[i + 4]
    redis.call(unpack(entry))
    total = total + 1
    errors = errors + 1
    counts[ARGV[i + 1]] = (counts[ARGV[i + 1]] or 0) + 1
  end
  i = i + 6 + nfields * 2
end
-- HINCRBY by 0 creates a missing field at 0: readers of the hash see every counter from the first flush.
redis.call('HINCRBY', KEYS[2], 'totalEvents', total)
redis.call('HINCRBY', KEYS[2], 'errors', errors)
if filtered > 0 then redis.call('HINCRBY', KEYS[2], 'filtered', filtered) end
if out_of_scope > 0 then redis.call('HINCRBY', KEYS[2], 'outOfScope', out_of_scope) end
for j = i, #ARGV do
  redis.call('HINCRBY', KEYS[2], ARGV[j], counts[ARGV[j]] or 0)
  counts[ARGV[j]] = nil
end
for name, count in pairs(counts) do
  if string.sub(name, 1, 1) == '#' or string.sub(name, 1, 7) == 'errors:' then
    redis.call('HINCRBY', KEYS[2], name, count)
  end
end
if total > 0 then
  redis.call('INCRBY', KEYS[3], total)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  redis.call('INCRBY', KEYS[4], total)
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  for bucket, count in pairs(latencies) do redis.call('HINCRBY', KEYS[6], bucket, count) end
end
return {total, errors}
