"""The worker's Lua scripts: taking jobs, renewing and releasing their leases, finishing them.

Key names come in as arguments (the prefixes of jobs/keys.py, which are arq's), so every name
the worker writes is still spelled in one place.
"""

from __future__ import annotations

# arq's rule for taking a job (not held by another worker, still queued, due now), applied to
# the due jobs at the head of the queue in one script. Returns the id, score pairs it locked,
# then the score of the earliest job not yet due (-1 if none), so the worker knows how long
# it may sleep without another look. Taking k jobs also takes k - 1 wake tokens (the BLPOP
# took one): tokens left over are for jobs still waiting, and wake another worker.
# "Now" is Redis's clock: the script may run a second after it was sent (pipelined behind a BLPOP).
# For every job it takes it also runs what arq's run_job would open the job with (GET the job,
# INCR + EXPIRE its try counter, ZREM it from the abort set when aborts are on) and returns the
# id, score, payload, try and abort flag, in groups of five.
# KEYS: queue, wake list; ARGV: (unused), how many to look at, how many to take, lease ms, lock
# prefix, this worker's token (the lock's value: arq only checks that the lock exists), job key
# prefix, try counter prefix, abort set ('' when aborts are off).
CLAIM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local out = {}
local want = tonumber(ARGV[3])
for i = 1, #due, 2 do
  if #out >= 5 * want then break end
  local lock = ARGV[5] .. due[i]
  if redis.call('EXISTS', lock) == 0 then
    redis.call('PSETEX', lock, ARGV[4], ARGV[6])
    local tries = redis.call('INCR', ARGV[8] .. due[i])
    redis.call('EXPIRE', ARGV[8] .. due[i], 88400)
    local aborted = 0
    if ARGV[9] ~= '' then aborted = redis.call('ZREM', ARGV[9], due[i]) end
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
    out[#out + 1] = redis.call('GET', ARGV[7] .. due[i])
    out[#out + 1] = tries
    out[#out + 1] = aborted
  end
end
if #out > 5 then
  redis.call('LTRIM', KEYS[2], 0, -(#out / 5))
end
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
out[#out + 1] = nxt[2] or '-1'
return out
"""


# A lease is renewed, and released, only by the worker holding it: one whose renewals failed
# for a whole lease (a Redis outage, a blocked loop) must not extend or delete the lock of the
# worker that has since taken the job over.
RENEW_LUA = """
for _, lock in ipairs(KEYS) do
  if redis.call('GET', lock) == ARGV[1] then redis.call('PEXPIRE', lock, ARGV[2]) end
end
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""


# arq's finish_job for every job of a batch in one script (atomic, as arq's MULTI/EXEC is): the
# same commands, but one command for Redis to parse and the client to pack instead of five per
# job (a finish cost the chat worker ~100 µs of CPU per job that way, ~40 µs this way).
# KEYS: queue, abort set; ARGV: this worker's token, then the lock, result, retry and job key
# prefixes, then per job six values: id, finish ('1' or ''), result ('' for none), result ms
# ('' keeps it forever), lease ms to keep the lock for ('' releases it), score increment ('' none).
FINISH_LUA = """
for i = 6, #ARGV, 6 do
  local jid = ARGV[i]
  local lock = ARGV[2] .. jid
  if ARGV[i + 4] == '' then
    if redis.call('GET', lock) == ARGV[1] then redis.call('DEL', lock) end
  else
    redis.call('PEXPIRE', lock, ARGV[i + 4])
  end
  if ARGV[i + 1] == '1' then
    if ARGV[i + 2] ~= '' then
      if ARGV[i + 3] == '' then
        redis.call('SET', ARGV[3] .. jid, ARGV[i + 2])
      else
        redis.call('SET', ARGV[3] .. jid, ARGV[i + 2], 'PX', ARGV[i + 3])
      end
    end
    redis.call('DEL', ARGV[4] .. jid, ARGV[5] .. jid)
    redis.call('ZREM', KEYS[2], jid)
    redis.call('ZREM', KEYS[1], jid)
  elseif ARGV[i + 5] ~= '' then
    redis.call('ZINCRBY', KEYS[1], ARGV[i + 5], jid)
  end
end
"""
