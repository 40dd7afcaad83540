"""The Redis session store (``--session-store redis://...``): write-through, fenced by an ownership epoch.

Every replica of a cluster opens the same Redis; a session's record lives there, and a replica's
memory is only a cache of it. Each verb is one Lua script (atomic, one round trip), so a write
is either whole or absent, whatever happens to the replica or the connection.

Key layout (``PREFIX`` is ``rnnpolicy:`` unless the URL says ``?prefix=``)::

    PREFIX s:SESSION_ID   hash    epoch   the ownership epoch (decimal); raised by one by each claim
                                  seq     the last applied seq (decimal)
                                  record  the rnnpolicy.v1.SessionRecord bytes (session_record.proto);
                                          its own epoch field is its writer's: the hash's epoch rules
                          expiry  the idle TTL, set again by every write (none when the TTL is 0)
    PREFIX t:SESSION_ID   string  the rnnpolicy.v1.Tombstone bytes of a closed or expired session,
                                  kept for ``tombstone_ttl`` seconds
    PREFIX n:SESSION_ID   hash    seq -> how many commits applied it (only with ``?count_commits=1``,
                                  a testing aid: exactly-once means every count is 1)

A session that Redis itself expired (idle past the TTL while no replica held it) leaves no
tombstone: a later call finds it unknown.

URL: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://`` (TLS; redis-py's ``ssl_*`` query
options, e.g. ``?ssl_ca_certs=ca.pem``) or ``unix:///path/redis.sock``. redis-py's query options
apply (``socket_timeout``, ``socket_connect_timeout``, ``max_connections``...; defaults here 2 s, 2 s
and 64 connections, beyond which commands wait for a free one), plus this
store's own: ``prefix``, ``tombstone_ttl`` (seconds) and ``count_commits``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rnnpolicy.serve.records import RecordError, SessionRecord, Tombstone, decode_record, encode_record
from rnnpolicy.serve.store import Commit, MemoryStore, SessionStore, StoreUnavailable
from rnnpolicy.v1 import session_record_pb2 as rpb

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TOMBSTONE_TTL", "RedisStore", "open_store", "redacted_url"]

DEFAULT_PREFIX = "rnnpolicy:"
DEFAULT_TOMBSTONE_TTL = 24 * 3600.0
_SCHEMES = ("redis", "rediss", "unix")
_OWN_OPTIONS = ("prefix", "tombstone_ttl", "count_commits")
_log = logging.getLogger("rnnpolicy.serve.redis_store")

# KEYS[1] session; ARGV epoch, seq, record, ttl_ms. 1: stored; 0: the id exists already.
_INSERT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', ARGV[2], 'record', ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

# KEYS[1] session; ARGV ttl_ms. {new epoch, record bytes}, or nil for an unknown session.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {epoch, redis.call('HGET', KEYS[1], 'record')}
"""

# KEYS: the n session keys, then (with counting) their n counter keys.
# ARGV[1] ttl_ms, ARGV[2] '1' to count, ARGV[3] the counters' ttl_ms, ARGV[4] per row "epoch base_seq seq length"
# (decimal, space-separated), ARGV[5] the rows' records end to end (two arguments for any batch: the client packs
# them in microseconds, where a thousand arguments took milliseconds).
# Each row applies only if the stored (epoch, seq) is (epoch, base_seq); a key that is not our hash fences its row.
_COMMIT = """
local ttl = tonumber(ARGV[1])
local count = ARGV[2] == '1'
local n = count and #KEYS / 2 or #KEYS
local fields = {}
for value in string.gmatch(ARGV[4], '%d+') do fields[#fields + 1] = value end
local records = ARGV[5]
local at = 1
local applied = {}
for i = 1, n do
  local epoch, base, seq = fields[4 * i - 3], fields[4 * i - 2], fields[4 * i - 1]
  local length = tonumber(fields[4 * i])
  local stored = redis.pcall('HMGET', KEYS[i], 'epoch', 'seq')
  if type(stored) == 'table' and stored[1] == epoch and stored[2] == base then
    redis.call('HSET', KEYS[i], 'seq', seq, 'record', string.sub(records, at, at + length - 1))
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
    if count then
      redis.call('HINCRBY', KEYS[n + i], seq, 1)
      redis.call('PEXPIRE', KEYS[n + i], ARGV[3])
    end
    applied[i] = 1
  else
    applied[i] = 0
  end
  at = at + length
end
return applied
"""

# KEYS[1] session, KEYS[2] tombstone; ARGV epoch, tombstone bytes, tombstone ttl_ms. 1: deleted; 0: fenced.
_DELETE = """
local epoch = redis.pcall('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# Redis answers these while it cannot serve writes (loading its AOF, a failed fsync, a read-only replica...).
_UNAVAILABLE_REPLIES = ("LOADING", "MISCONF", "READONLY", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN")


def redacted_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore(SessionStore):
    """Sessions in Redis, written through: each step's record is committed before the step is answered.

    Use one instance from one event loop (redis-py's asyncio connections belong to the loop that
    opened them). See the module docstring for the key layout.
    """

    write_through = True

    def __init__(self, client: redis.asyncio.Redis, *, ttl: float, describe: str = "redis",
                 prefix: str = DEFAULT_PREFIX, tombstone_ttl: float = DEFAULT_TOMBSTONE_TTL,
                 count_commits: bool = False) -> None:
        if ttl < 0:
            raise ValueError(f"session ttl must be >= 0 seconds (0: never expires), got {ttl}")
        if tombstone_ttl <= 0:
            raise ValueError(f"tombstone_ttl must be > 0 seconds, got {tombstone_ttl}")
        self._redis = client
        self.describe = describe  # type: ignore[misc]  # per instance: the redacted URL
        self.prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        self._tombstone_ttl_ms = max(1, int(tombstone_ttl * 1000))
        self.count_commits = count_commits
        self._insert = client.register_script(_INSERT)
        self._claim = client.register_script(_CLAIM)
        self._commit = client.register_script(_COMMIT)
        self._delete = client.register_script(_DELETE)

    @classmethod
    def from_url(cls, url: str, ttl: float) -> RedisStore:
        """A store on the Redis at ``url`` (see the module docstring); ``ValueError`` for a URL it cannot use."""
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
        except ModuleNotFoundError:
            raise ValueError(f"session store {redacted_url(url)!r} needs the redis client: "
                             "pip install 'rnnpolicy[cluster]'") from None
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"session store {redacted_url(url)!r}: expected a redis://, rediss:// or unix:// URL "
                             f"(or '' for the in-memory store), got scheme {parts.scheme!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _OWN_OPTIONS}
        redis_url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in _OWN_OPTIONS])))
        try:
            tombstone_ttl = float(own.get("tombstone_ttl", DEFAULT_TOMBSTONE_TTL))
        except ValueError:
            raise ValueError(f"session store {redacted_url(url)!r}: tombstone_ttl must be seconds, "
                             f"got {own['tombstone_ttl']!r}") from None
        count = own.get("count_commits", "0")
        if count not in ("0", "1", "true", "false"):
            raise ValueError(f"session store {redacted_url(url)!r}: count_commits must be 0 or 1, got {count!r}")
        try:
            # A blocking pool: beyond max_connections concurrent commands, callers wait for a connection
            # (up to 5 s, then StoreUnavailable) instead of failing at once.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                redis_url, max_connections=64, timeout=5.0,
                socket_timeout=2.0, socket_connect_timeout=2.0,  # the URL's own options win
                # One immediate reconnect-and-retry on a broken connection (a Redis that restarted), none on a
                # timeout; then StoreUnavailable. A commit retried after it had in fact been applied is refused
                # by its own seq check, and the caller answers from the stored record: no step applied twice.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
            client = redis.asyncio.Redis.from_pool(pool)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"session store {redacted_url(url)!r}: {exc}") from None
        return cls(client, ttl=ttl, describe=redacted_url(url), prefix=own.get("prefix", DEFAULT_PREFIX),
                   tombstone_ttl=tombstone_ttl, count_commits=count in ("1", "true"))

    # ------------------------------------------------------------------ keys

    def session_key(self, session_id: str) -> str:
        return f"{self.prefix}s:{session_id}"

    def tombstone_key(self, session_id: str) -> str:
        return f"{self.prefix}t:{session_id}"

    def counter_key(self, session_id: str) -> str:
        return f"{self.prefix}n:{session_id}"

    # ------------------------------------------------------------------ the SessionStore verbs

    async def insert(self, record: SessionRecord) -> None:
        """Store a new session; ``ValueError`` when its id is stored already."""
        try:
            stored = await self._insert(keys=[self.session_key(record.session_id)],
                                        args=[record.epoch, record.last_seq, encode_record(record), self._ttl_ms])
        except Exception as exc:
            raise self._translate(exc) from None
        if not stored:
            raise ValueError(f"session {record.session_id!r} is stored already (session ids must be new)")

    async def claim(self, session_id: str) -> SessionRecord | None:
        try:
            reply = await self._claim(keys=[self.session_key(session_id)], args=[self._ttl_ms])
        except Exception as exc:
            raise self._translate(exc, session_id) from None
        if reply is None:
            return None
        epoch, data = reply
        if data is None:
            raise RecordError(f"session {session_id!r}: key {self.session_key(session_id)!r} holds no record field "
                              f"(written by something other than rnnpolicy?)")
        record = decode_record(data)
        if record.session_id != session_id:
            raise RecordError(f"key {self.session_key(session_id)!r} holds the record of session "
                              f"{record.session_id!r}, expected {session_id!r}")
        return record.with_epoch(int(epoch))

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        if not commits:
            return []
        keys = [self.session_key(c.record.session_id) for c in commits]
        if self.count_commits:
            keys += [self.counter_key(c.record.session_id) for c in commits]
        records = [encode_record(c.record) for c in commits]
        rows = " ".join(f"{c.record.epoch} {c.base_seq} {c.record.last_seq} {len(r)}" for c, r in zip(commits, records))
        try:
            applied = await self._commit(keys=keys, args=[self._ttl_ms, "1" if self.count_commits else "0",
                                                          self._tombstone_ttl_ms, rows, b"".join(records)])
        except Exception as exc:
            raise self._translate(exc) from None
        return [bool(a) for a in applied]

    async def delete(self, session_id: str, epoch: int, tombstone: Tombstone) -> None:
        data = rpb.Tombstone(session_id=tombstone.session_id, fate=tombstone.fate, wall=tombstone.wall,
                             principal=tombstone.principal).SerializeToString()
        try:
            deleted = await self._delete(keys=[self.session_key(session_id), self.tombstone_key(session_id)],
                                         args=[epoch, data, self._tombstone_ttl_ms])
        except Exception as exc:
            raise self._translate(exc, session_id) from None
        if not deleted:
            _log.debug("event=delete_fenced session=%s epoch=%d", session_id, epoch)

    async def tombstone(self, session_id: str) -> Tombstone | None:
        try:
            data = await self._redis.get(self.tombstone_key(session_id))
        except Exception as exc:
            raise self._translate(exc, session_id) from None
        if data is None:
            return None
        try:
            message = rpb.Tombstone.FromString(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise RecordError(f"key {self.tombstone_key(session_id)!r} is not a tombstone ({len(data)} bytes): "
                              f"{exc}") from None
        return Tombstone(message.session_id, message.fate, message.wall, message.principal)

    async def healthy(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:  # noqa: BLE001 - any failure to answer is "not healthy now"
            return False

    async def close(self) -> None:
        await self._redis.aclose()

    # ------------------------------------------------------------------ testing and measurement aids

    async def commit_counts(self, session_id: str) -> dict[int, int]:
        """seq -> how many commits applied it (``count_commits`` must be on)."""
        if not self.count_commits:
            raise ValueError("commit_counts needs a store opened with count_commits (URL option ?count_commits=1)")
        counts = await self._redis.hgetall(self.counter_key(session_id))
        return {int(seq): int(n) for seq, n in counts.items()}

    async def stored_epoch_and_seq(self, session_id: str) -> tuple[int, int] | None:
        """The stored (epoch, seq) of ``session_id``, None when it is not stored."""
        epoch, seq = await self._redis.hmget(self.session_key(session_id), "epoch", "seq")
        return None if epoch is None else (int(epoch), int(seq))

    async def memory_usage(self, session_id: str) -> int:
        """Bytes Redis uses for the session's key (``MEMORY USAGE ... SAMPLES 0``: every field counted)."""
        return int(await self._redis.memory_usage(self.session_key(session_id), samples=0))

    # ------------------------------------------------------------------

    def _translate(self, exc: BaseException, session_id: str = "") -> Exception:
        """The store's error for a redis-py failure: StoreUnavailable when Redis cannot be reached or cannot
        serve now, RecordError for a key holding something else, the error itself otherwise."""
        import redis.exceptions as rx

        if isinstance(exc, (rx.ConnectionError, rx.TimeoutError, OSError, TimeoutError)):
            return StoreUnavailable(f"{self.describe}: {exc or type(exc).__name__}")
        if isinstance(exc, rx.ResponseError):
            text = str(exc)
            if text.startswith(_UNAVAILABLE_REPLIES):
                return StoreUnavailable(f"{self.describe}: {text}")
            if session_id and ("WRONGTYPE" in text or "not an integer" in text):
                return RecordError(f"session {session_id!r}: key {self.session_key(session_id)!r} is not an rnnpolicy "
                                   f"session record: {text}")
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


def open_store(url: str, ttl: float) -> SessionStore:
    """The session store ``url`` names: ``""`` the in-memory store, ``redis://``, ``rediss://`` or ``unix://`` a
    :class:`RedisStore` with the idle ``ttl`` (seconds, 0: never). ``ValueError`` for any other URL."""
    if not url:
        return MemoryStore()
    return RedisStore.from_url(url, ttl)
