-- GCRA shared by every replica: the same arithmetic as the local limiter (governor), so a
-- key gets `burst` requests at once and then one per `interval`, whichever replica it hits.
-- Time is Redis' own clock (TIME), so replicas' clocks need not agree.
--
-- KEYS[1]  the key's state: its theoretical arrival time (µs since 2026-01-01)
-- ARGV[1]  emission interval in µs (1e6 / per_second; may have a fraction)
-- ARGV[2]  burst
-- Returns {allowed (0|1), remaining, retry_after_us, reset_us}.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
-- An epoch near today keeps the numbers small enough for a double to hold fractions of a µs.
local now = (tonumber(t[1]) - 1767225600) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
-- The state expires when it would equal a fresh one, so idle keys cost Redis nothing.
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
