-- run_firehose's push of a batch into firehose:events (pipeline.stream.Pusher).
-- KEYS: stream, cursor, per-second bucket, per-minute bucket. ARGV: the cursor this process last wrote
-- ("" for none), the two bucket TTLs, then the ID ("<generation>-<seq>"), seq, t, did, frame, received_at of
-- each entry (the ID comes ready-made: building it in Lua costs Redis more than the XADD itself).
-- firehose:cursor holds the ID of the last entry pushed. If it is not what this process last wrote, Redis
-- lost its data (or another process pushed): nothing is pushed, since the new entries' IDs would forbid
-- filling the gap behind them later.
-- An XADD that Redis refuses (ID not above the stream's last ID) is a duplicate or a rewind: counted,
-- never fatal. Returns {added or -1, refused, cursor, XLEN}.
local current = redis.call('GET', KEYS[2])
if current == false then
  current = ''
elseif not string.find(current, '-', 1, true) then
  current = current .. '-0'  -- written before generations: the seq alone stood for the ID "<seq>-0"
end
if current ~= ARGV[1] then
  return {-1, 0, current, redis.call('XLEN', KEYS[1])}
end
local added, refused, last = 0, 0, current
for i = 4, #ARGV, 6 do
  local reply = redis.pcall('XADD', KEYS[1], ARGV[i], 'seq', ARGV[i + 1], 't', ARGV[i + 2], 'did', ARGV[i + 3],
    'frame', ARGV[i + 4], 'received_at', ARGV[i + 5])
  if type(reply) == 'table' and reply.err then
    refused = refused + 1
  else
    added = added + 1
    last = ARGV[i]
  end
end
if added > 0 then
  redis.call('SET', KEYS[2], last)
  redis.call('INCRBY', KEYS[3], added)
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  redis.call('INCRBY', KEYS[4], added)
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
return {added, refused, last, redis.call('XLEN', KEYS[1])}
