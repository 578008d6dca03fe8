"""Everything this app keeps in Redis about a session, and how a save is stored.

The store takes a session id and owns every key name. A session is one hash,
``session:{<SHA-256 of the session id, hex>}`` (the braces are a cluster hash tag, so whatever
is added to a session later stays in its slot), with a TTL of the session lifetime:

* ``doc``: the session's JSON document (when it started, and anything else the app keeps);
* ``n``: the number of messages, ``bytes``: their size in bytes;
* ``m:<i>``: message ``i`` (1 for the oldest);
* ``s:<save id>``: the number of the message stored by that save (see ``save``).

The session id itself is never stored: it is the bearer credential in the user's cookie, and a
key listing, an RDB snapshot, ``MONITOR`` or the slow log would hand it to anyone who can read
them. One key makes a session one eviction unit: under memory pressure Redis drops whole
sessions, never a document without its messages. Storing each message in its own field makes a
save O(1) whatever the session holds, where the common pattern (read the list from the
session, append, write it all back) loses concurrent saves and grows with the session.

Keys of the layouts before this one (``session:<sid>`` and ``session:<sid>:messages``, then
``session:{<sid>}``) are never read: such sessions start afresh and their keys expire with
their TTL.

Every script that writes a session reads it again as its last command: Redis stops tracking a
key for the connection that writes it (app/nodes.py), and this read tracks it again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from .lru import LRU
from .read_cache import StoredSession
from .redis_client import RedisClient, Script
from .replication import ReplicaWait

log = logging.getLogger(__name__)

KEY_PREFIX = "session:"
_REFRESH_MEMORY = 50_000  # sessions whose last expiry refresh a worker remembers

# One script per save, so that neither the limits nor the order of concurrent saves can be
# raced, and a new session's document and first message appear together.
# KEYS[1]: the session. ARGV: the message, the count limit, the TTL, the new session's
# document (empty for an existing session), the save id, the byte budget, and "1" to store
# nothing new (only answer a repeat: a form the rate limit refused that may be stored already).
# Answers {status, number}: 1 stored as message `number`; 0 stored before by the same save id
# with the same text (a save re-sent by redis-py after a dropped connection, or the user
# pressing Save again on the same form: stored once; a refused form shown again keeps its save
# id, and edited there, its text is another message); -1 full; -2 the session is gone
# (destroyed in another tab, or expired: never resurrected, as Spring Session does), or for a
# new one, taken; -3 over budget; -4 not stored before (only with "1"). ARGV[8]: "1" when WAIT
# follows the script.
_SAVE = Script("""
local key = KEYS[1]
-- Every answer follows a write, so that a demoted primary answers READONLY rather than a stale
-- answer (the retry then asks the new primary): "stored" when it may not have the save, "gone"
-- for a session begun on the new primary after a failover (the user would lose it). Where
-- nothing else is written, a no-op one: HDEL of a field never used, allowed when memory is full
-- and never replicated. Not at the start: a script's first write lets its later ones past a
-- full memory (maxmemory), where a save must be refused.
local function unwritten(status, number)
  redis.call('HDEL', key, 's:')
  return {status, number}
end
-- "Gone" is believed only where WAIT confirms that the replicas hear this node now (a node cut
-- off from them may be a primary replaced in a failover, lacking a session begun on the new
-- one). The no-op write reaches no replica, and WAIT would count acknowledgements of this
-- connection's last real write, made before: an empty message on a channel nobody uses does.
-- (pcall: a user whose ACL refuses the channel keeps that weaker check, not a failed save.)
local function gone()
  if ARGV[8] == '1' then
    redis.pcall('PUBLISH', 'session-store:gone', '')
  end
  return unwritten(-2, 0)
end
local done = redis.call('HGET', key, 's:' .. ARGV[5])
if done and redis.call('HGET', key, 'm:' .. done) == ARGV[1] then
  redis.call('EXPIRE', key, ARGV[3])
  redis.call('EXISTS', key)
  return {0, tonumber(done)}
end
if ARGV[7] == '1' then
  return unwritten(-4, 0)
end
local state = redis.call('HMGET', key, 'doc', 'n', 'bytes')
if ARGV[4] == '' then
  -- Gone, or a document this app would not read (not a JSON object): never appended to.
  if not state[1] or string.byte(state[1], 1) ~= 123 or not pcall(cjson.decode, state[1]) then
    return gone()
  end
elseif redis.call('EXISTS', key) == 1 then
  return gone()
end
local n = tonumber(state[2] or '0')
local bytes = tonumber(state[3] or '0') + #ARGV[1]
if n >= tonumber(ARGV[2]) then
  return unwritten(-1, n)
end
if bytes > tonumber(ARGV[6]) then
  return unwritten(-3, n)
end
n = n + 1
if ARGV[4] ~= '' then
  redis.call('HSET', key, 'doc', ARGV[4])
end
redis.call('HSET', key, 'm:' .. n, ARGV[1], 'n', n, 'bytes', bytes, 's:' .. ARGV[5], n)
redis.call('EXPIRE', key, ARGV[3])
redis.call('EXISTS', key)
return {1, n}
""")

# The document of an existing session (changed by code other than a save); 0 when it is gone.
# Its answers, and _CREATE_DOCUMENT's, follow a write as _SAVE's do (a no-op HDEL where
# nothing else is written).
_WRITE_DOCUMENT = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HDEL', KEYS[1], 's:')
  return 0
end
redis.call('HSET', KEYS[1], 'doc', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('EXISTS', KEYS[1])
""")

# A new session holding only a document (code other than a save stored something in it).
_CREATE_DOCUMENT = Script("""
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HDEL', KEYS[1], 's:')
  return 0
end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'n', 0, 'bytes', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('EXISTS', KEYS[1])
""")

# Slide the expiry; 0 when the session is gone.
_REFRESH = Script("""
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('EXISTS', KEYS[1])
""")


class SessionFull(Exception):
    """The session already holds the most messages it may keep."""


class SessionOverBudget(Exception):
    """The message would take the session over its byte budget."""


class SessionGone(Exception):
    """The session was deleted or expired (or, for a new session, its id is taken)."""


@dataclass(frozen=True)
class Limits:
    messages: int  # messages one session may hold
    bytes: int  # bytes of messages one session may hold
    ttl_seconds: int  # the session lifetime (idle expiry)


# Remembered per worker: hashing costs a page view a microsecond or two each time.
@functools.lru_cache(maxsize=4096)
def session_key(sid: str) -> str:
    """The key of the session whose id is ``sid``: a hash of it, never the id itself."""
    return f"{KEY_PREFIX}{{{hashlib.sha256(sid.encode()).hexdigest()}}}"


def _parse(fields: dict[str, str]) -> StoredSession | None:
    """The session in a hash's fields; None when there is none, or when its document is not a
    JSON object (a pickle planted by someone who can write to Redis, say): logged, and never
    decoded otherwise."""
    document = fields.get("doc")
    if document is None:
        return None
    try:
        data = json.loads(document)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("ignoring a session document that is not a JSON object")
        return None
    count = int(fields.get("n", "0"))
    found = (fields.get(f"m:{i}") for i in range(1, count + 1))
    return StoredSession(data, tuple(m for m in found if m is not None), len(document))


def _encode(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


class SessionStore:
    """The session operations on Redis, by session id."""

    def __init__(self, redis: RedisClient, limits: Limits, replicas: ReplicaWait) -> None:
        self.redis = redis
        self.limits = limits
        self.replicas = replicas
        # Sliding expiry without a write per request: refreshing at most every tenth of the
        # lifetime (and at least once a minute) keeps the idle timeout within 10% of its value.
        self.refresh_interval = min(60.0, limits.ttl_seconds / 10)
        self.refreshed: LRU[str, float] = LRU(_REFRESH_MEMORY)  # session id: when slid

    def load(self, sid: str, at_least: int = 0) -> StoredSession | None:
        """The session as of the start of this request; None if there is none (or none this
        app would read: see ``_parse``). ``at_least``: the browser has seen that many messages
        saved, so a cached copy holding fewer is stale."""
        return self.redis.read(session_key(sid), _parse, at_least)

    def save(self, sid: str, text: str, save_id: str, document: dict[str, Any] | None) -> int:
        """Append one message, once per ``save_id``; with ``document``, create the session.

        One round trip: the script, with ``WAIT`` pipelined after it when saves wait for a
        replica. Returns the message's number; raises SessionFull, SessionOverBudget,
        SessionGone, or replication.NotReplicated (stored, but not confirmed by a replica).
        """
        _, number = self._save(sid, text, save_id, document, repeat_only=False)
        return number

    def saved(self, sid: str, save_id: str, text: str) -> int | None:
        """Acknowledge a save of ``text`` that ``save_id`` stored before, as the save itself is
        acknowledged (the expiry slid, ``WAIT``, ``settle``: a 303 means the same either way);
        None when it stored none, and then nothing is stored now either."""
        status, number = self._save(sid, text, save_id, None, repeat_only=True)
        return number if status == 0 else None

    def _save(
        self,
        sid: str,
        text: str,
        save_id: str,
        document: dict[str, Any] | None,
        *,
        repeat_only: bool,
    ) -> tuple[int, int]:
        """The script's answer, ``(status, number)``, once acknowledged (or refused)."""
        key = session_key(sid)
        encoded = "" if document is None else _encode(document)
        args = [text, self.limits.messages, self.limits.ttl_seconds, encoded, save_id]
        wait = self.replicas.wait_now()
        args += [self.limits.bytes, "1" if repeat_only else "", "1" if wait else ""]
        then = [("WAIT", 1, self.replicas.timeout_ms)] if wait else []
        replies, node = self.redis.script("save", key, _SAVE, args, then, creates=bool(encoded))
        status, number = (int(value) for value in replies[0])
        if status == -4:
            return status, number  # nothing stored, then or now: nothing to acknowledge
        if status == -1:
            raise SessionFull
        if status == -2:
            # Believed only where a save would be acknowledged: a primary on its way out of a
            # failover (still writable, its replica promoted) lacks a session begun on the new
            # primary, and "gone" would start the user a new session (NotReplicated: a 503).
            self._acknowledge(replies, wait, stored=False)
            raise SessionGone
        if status == -3:
            raise SessionOverBudget
        if node is None:
            self.redis.found(key)  # stored: the session's next commands here are tracked
        elif status == 1:  # a copy only where this worker's connection tracks it
            if document is None:
                self.redis.appended(key, node, number, text)
            else:
                self.redis.cached(key, node, StoredSession(document, (text,), len(encoded)))
        self._acknowledge(replies, wait, stored=True)
        # The script slid the expiry, and the answer carries the cookie (sessions.py). Not
        # recorded for a save answered 503: the next page view slides both again.
        self.refreshed.put(sid, time.monotonic())
        return status, number

    def _acknowledge(self, replies: list[Any], wait: bool, *, stored: bool) -> None:
        """Returns where the node's answer stands (``WAIT``'s reply, if sent, is the second);
        raises NotReplicated where it may not (replication.ReplicaWait.settle)."""
        acknowledged = replies[1] if wait else None
        if isinstance(acknowledged, ResponseError):
            self.replicas.wait_refused(acknowledged)
        self.replicas.settle(acknowledged, stored=stored)

    def write_document(self, sid: str, document: dict[str, Any], *, new: bool) -> bool:
        """Store the session's document (changed by code other than a save); False when the
        session is gone (or, ``new``, its id is taken)."""
        key = session_key(sid)
        script = _CREATE_DOCUMENT if new else _WRITE_DOCUMENT
        args = [_encode(document), self.limits.ttl_seconds]
        try:
            (done, *_), _ = self.redis.script("write_document", key, script, args)
        finally:
            self.redis.forget(key)
        if done:
            self.refreshed.put(sid, time.monotonic())
        return bool(done)

    def refresh_if_due(self, sid: str) -> bool:
        """Slide the session's expiry forward unless this worker did so lately; whether it did
        (False too when the session is gone)."""
        last = self.refreshed.get(sid)
        now = time.monotonic()
        if last is not None and now - last < self.refresh_interval:
            return False
        key = session_key(sid)
        (done, *_), _ = self.redis.script("refresh", key, _REFRESH, [self.limits.ttl_seconds])
        if done:
            self.refreshed.put(sid, now)
        return bool(done)

    def delete(self, sid: str) -> bool:
        """Delete the session; whether there was one."""
        self.refreshed.pop(sid, None)
        return bool(self.redis.delete(session_key(sid)))
