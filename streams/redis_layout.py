"""The Redis key layout and the scripts that write it: which keys a customer's data lives
under, and the atomic steps that keep them consistent (see ``streams.redis_cache``)."""

from __future__ import annotations

import zlib
from typing import Final

# Buckets per shop: how many slots (and so cluster nodes) a shop's customers spread over.
# Changing it moves every key: LAYOUT names it so that the sync markers of another layout are
# not taken for this one's (the workers then write every customer again).
BUCKETS: Final = 16
LAYOUT: Final = f"b{BUCKETS}"

# KEYS: the group's customer hashes, then segment sets of its bucket (one slot). ARGV[1]: a
# JSON list of [index of the hash in KEYS, revision, segment, member, fields]; ARGV[2]: the
# bucket's segment set prefix. A customer whose stored segment's set is not among the KEYS is
# left alone and that segment returned: the caller calls again with its set declared.
WRITE_SCRIPT: Final = """
local declared = {}
for i = 1, #KEYS do declared[KEYS[i]] = true end
local items = cjson.decode(ARGV[1])
local sets = ARGV[2]
local written, undeclared = 0, {}
for i = 1, #items do
  local index, revision, segment, member, fields = unpack(items[i])
  local key = KEYS[index]
  local stored = redis.call('HMGET', key, 'revision', 'segment')
  local current, old = stored[1], stored[2]
  if not (current and tonumber(current) > tonumber(revision)) then
    local moved = old and old ~= '' and old ~= segment
    if moved and not declared[sets .. old] then
      undeclared[#undeclared + 1] = old
    else
      if moved then
        redis.call('SREM', sets .. old, member)
      end
      if segment ~= '' then
        redis.call('SADD', sets .. segment, member)
      end
      redis.call('HSET', key, 'revision', revision, 'segment', segment, unpack(fields))
      written = written + 1
    end
  end
end
return {written, undeclared}
"""

# KEYS[1]: the customer's hash, then segment sets of its bucket. ARGV[1]: the bucket's segment
# set prefix, ARGV[2]: the member. Returns the stored segment if its set was not declared.
REMOVE_SCRIPT: Final = """
local segment = redis.call('HGET', KEYS[1], 'segment')
if segment and segment ~= '' then
  local set = ARGV[1] .. segment
  local found = false
  for i = 2, #KEYS do found = found or KEYS[i] == set end
  if not found then return segment end
  redis.call('SREM', set, ARGV[2])
end
redis.call('DEL', KEYS[1])
return ''
"""
# Customers per script call: each call is one atomic step of Redis (of one node of a cluster),
# which serves nothing else meanwhile (about a millisecond per 500 customers).
WRITE_CHUNK: Final = 500
# Calls again with the undeclared sets of a group: a concurrent move could need one more.
DECLARE_ATTEMPTS: Final = 3


def bucket(customer_id: str) -> int:
    """The customer's bucket: the same in every process and version (not Python's hash)."""
    return zlib.crc32(customer_id.encode()) % BUCKETS
