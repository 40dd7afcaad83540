"""The Redis session store against a real redis-server: CAS on (epoch, seq), fencing, tombstones, outages."""

from __future__ import annotations

import asyncio
import signal

import numpy as np
import pytest
from cluster_procs import RedisServer, require_redis_client, start_redis

from rnnpolicy.serve.processes import free_port
from rnnpolicy.serve.records import RecordError, SessionRecord, Tombstone, encode_record
from rnnpolicy.serve.store import Commit, MemoryStore, StoreUnavailable

require_redis_client()

from rnnpolicy.serve.redis_store import RedisStore, open_store, redacted_url  # noqa: E402 - after the skip


def make_record(session_id: str = "s1", *, seq: int = 0, epoch: int = 1, hidden: int = 16, fill: float = 0.0,
                principal: str = "") -> SessionRecord:
    return SessionRecord(
        session_id=session_id, model="q_lstm", version="abc123", principal=principal, seed=7,
        rng={"bit_generator": "PCG64", "state": {"state": 1, "inc": 3}, "has_uint32": 0, "uinteger": 0},
        last_seq=seq, last_used=1_700_000_000.5, epoch=epoch,
        state=(np.full((1, hidden), fill, np.float32), np.full((1, hidden), -fill, np.float32)),
        state_names=("state_h", "state_c"), last_out=np.arange(5, dtype=np.float32) + fill, affinity="game-7")


def stepped(record: SessionRecord, fill: float) -> SessionRecord:
    """``record`` one step later, with new state and output."""
    return SessionRecord(**{**record.__dict__, "last_seq": record.last_seq + 1,
                            "state": tuple(np.full_like(a, fill) for a in record.state),
                            "last_out": np.full_like(record.last_out, fill)})


def run(url: str, body, ttl: float = 300.0):
    """Run ``body(store)`` on a fresh event loop with a store on ``url`` (a store belongs to one loop)."""
    async def main():
        store = RedisStore.from_url(url, ttl)
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def assert_same(a: SessionRecord, b: SessionRecord) -> None:
    for name in ("session_id", "model", "version", "principal", "seed", "rng", "last_seq", "last_used", "epoch",
                 "state_names", "affinity"):
        assert getattr(a, name) == getattr(b, name), name
    for x, y in zip(a.state, b.state):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.last_out, b.last_out)


def test_insert_then_claim_round_trips_the_record_and_raises_the_epoch(redis_server):
    async def body(store: RedisStore):
        record = make_record(fill=0.25)
        await store.insert(record)
        claimed = await store.claim("s1")
        again = await store.claim("s1")
        return record, claimed, again, await store.stored_epoch_and_seq("s1"), await store.claim("nope")

    record, claimed, again, stored, unknown = run(redis_server.url, body)
    assert_same(claimed, record.with_epoch(2))
    assert again.epoch == 3 and stored == (3, 0)
    assert unknown is None


def test_insert_refuses_an_id_stored_already(redis_server):
    async def body(store: RedisStore):
        await store.insert(make_record())
        await store.insert(make_record())

    with pytest.raises(ValueError, match="'s1' is stored already"):
        run(redis_server.url, body)


def test_commit_applies_on_matching_epoch_and_seq_and_fences_the_rest_in_one_call(redis_server):
    async def body(store: RedisStore):
        a, b, c = make_record("a"), make_record("b"), make_record("c")
        for r in (a, b, c):
            await store.insert(r)
        taken = await store.claim("b")  # another replica took b over: epoch 2
        first = await store.commit([Commit(stepped(a, 1.0), 0), Commit(stepped(b, 1.0), 0),
                                    Commit(stepped(c, 1.0), 5)])  # c: wrong base seq
        # the new owner of b commits at its epoch; a replayed step of a (base seq 0 again) is refused
        second = await store.commit([Commit(stepped(taken, 2.0), 0), Commit(stepped(a, 9.0), 0)])
        return first, second, await store.claim("a"), await store.claim("b"), await store.claim("c")

    first, second, a, b, c = run(redis_server.url, body)
    assert first == [True, False, False]
    assert second == [True, False]
    assert a.last_seq == 1 and float(a.state[0][0, 0]) == 1.0  # the first commit, not the replay
    assert b.last_seq == 1 and float(b.state[0][0, 0]) == 2.0  # the new owner's, not the fenced one
    assert c.last_seq == 0 and float(c.state[0][0, 0]) == 0.0  # untouched


def test_a_state_write_commits_at_the_same_seq(redis_server):
    """Reset / SetSessionState / migration commit with base_seq == last_seq."""
    async def body(store: RedisStore):
        record = make_record(seq=4)
        await store.insert(record)
        written = SessionRecord(**{**record.__dict__, "state": (np.ones((1, 16), np.float32),) * 2})
        return await store.commit([Commit(written, 4)]), await store.claim("s1")

    applied, stored = run(redis_server.url, body)
    assert applied == [True] and stored.last_seq == 4 and float(stored.state[1][0, 3]) == 1.0


def test_commit_counts_each_applied_seq_once(redis_server):
    async def body(store: RedisStore):
        record = make_record()
        await store.insert(record)
        one = stepped(record, 1.0)
        two = stepped(one, 2.0)
        results = [await store.commit([Commit(one, 0)]), await store.commit([Commit(one, 0)]),
                   await store.commit([Commit(two, 1)])]
        return results, await store.commit_counts("s1")

    results, counts = run(redis_server.url + "?count_commits=1", body)
    assert results == [[True], [False], [True]]
    assert counts == {1: 1, 2: 1}


def test_commit_counts_needs_the_option(redis_server):
    with pytest.raises(ValueError, match="count_commits"):
        run(redis_server.url, lambda store: store.commit_counts("s1"))


def test_delete_only_at_its_epoch_and_keeps_a_tombstone(redis_server):
    async def body(store: RedisStore):
        await store.insert(make_record(principal="alice"))
        await store.claim("s1")  # epoch 2 now
        gone = Tombstone("s1", "closed", 1_700_000_100.0, "alice")
        await store.delete("s1", 1, gone)  # a stale owner: nothing happens
        kept = await store.stored_epoch_and_seq("s1"), await store.tombstone("s1")
        await store.delete("s1", 2, gone)
        return kept, await store.claim("s1"), await store.tombstone("s1"), await store.tombstone("never")

    (kept, no_tombstone), claimed, tombstone, unknown = run(redis_server.url, body)
    assert kept == (2, 0) and no_tombstone is None
    assert claimed is None
    assert tombstone == Tombstone("s1", "closed", 1_700_000_100.0, "alice")
    assert unknown is None


def test_a_commit_after_delete_is_fenced_and_recreates_nothing(redis_server):
    async def body(store: RedisStore):
        record = make_record()
        await store.insert(record)
        await store.delete("s1", 1, Tombstone("s1", "expired", 1.0, ""))
        return await store.commit([Commit(stepped(record, 1.0), 0)]), await store.claim("s1")

    assert run(redis_server.url, body) == ([False], None)


def test_every_write_sets_the_idle_ttl_again(redis_server):
    async def body(store: RedisStore):
        record = make_record()
        await store.insert(record)
        key = store.session_key("s1")
        after_insert = await store._redis.pttl(key)
        await store._redis.pexpire(key, 5_000)
        await store.commit([Commit(stepped(record, 1.0), 0)])
        return after_insert, await store._redis.pttl(key)

    after_insert, after_commit = run(redis_server.url, body, ttl=300.0)
    assert 290_000 < after_insert <= 300_000
    assert 290_000 < after_commit <= 300_000

    async def never(store: RedisStore):
        await store.insert(make_record("forever"))
        return await store._redis.pttl(store.session_key("forever"))

    assert run(redis_server.url, never, ttl=0.0) == -1  # no expiry


@pytest.mark.parametrize("stored, match", [
    (b"garbage\xff\x00", "not a session record"),
    (encode_record(make_record("someone-else")), "holds the record of session 'someone-else'"),
])
def test_a_corrupt_or_foreign_record_is_refused(redis_server, stored, match):
    async def body(store: RedisStore):
        await store._redis.hset(store.session_key("s1"), mapping={"epoch": 1, "seq": 0, "record": stored})
        await store.claim("s1")

    with pytest.raises(RecordError, match=match):
        run(redis_server.url, body)


def test_a_record_of_an_unknown_format_version_is_refused(redis_server):
    from rnnpolicy.serve.records import record_message

    message = record_message(make_record())
    message.format_version = 99
    with pytest.raises(RecordError, match="format version 99"):
        run(redis_server.url, lambda store: _store_raw(store, message.SerializeToString()))


async def _store_raw(store: RedisStore, data: bytes):
    await store._redis.hset(store.session_key("s1"), mapping={"epoch": 1, "seq": 0, "record": data})
    return await store.claim("s1")


def test_a_key_of_another_type_is_refused_by_claim_and_fences_a_commit(redis_server):
    async def body(store: RedisStore):
        await store._redis.set(store.session_key("s1"), b"someone else's string")
        fenced = await store.commit([Commit(stepped(make_record(), 1.0), 0)])
        try:
            await store.claim("s1")
        except RecordError as exc:
            return fenced, str(exc), await store._redis.get(store.session_key("s1"))

    fenced, error, untouched = run(redis_server.url, body)
    assert fenced == [False]
    assert "is not an rnnpolicy session record" in error
    assert untouched == b"someone else's string"


def test_unreachable_redis_raises_store_unavailable_from_every_verb():
    url = f"redis://127.0.0.1:{free_port()}/0"
    record = make_record()
    verbs = {
        "insert": lambda s: s.insert(record),
        "claim": lambda s: s.claim("s1"),
        "commit": lambda s: s.commit([Commit(stepped(record, 1.0), 0)]),
        "delete": lambda s: s.delete("s1", 1, Tombstone("s1", "closed", 1.0, "")),
        "tombstone": lambda s: s.tombstone("s1"),
    }
    for name, call in verbs.items():
        with pytest.raises(StoreUnavailable, match=f"redis://127.0.0.1:{url.split(':')[2]}"):
            run(url, call)
    assert run(url, lambda s: s.healthy()) is False


def test_the_store_recovers_when_redis_restarts_and_keeps_sessions_by_its_aof(tmp_path):
    server = start_redis(tmp_path / "redis", appendfsync="always")
    record = make_record()
    restarted: list[RedisServer] = []
    try:
        async def body(store: RedisStore):
            await store.insert(record)
            assert await store.commit([Commit(stepped(record, 1.0), 0)]) == [True]
            server.stop()  # SIGTERM: Redis exits
            with pytest.raises(StoreUnavailable):
                await store.claim("s1")
            down = await store.healthy()
            restarted.append(RedisServer(server.directory, server.port).start())  # same port, same AOF
            restarted[0].wait_ready()
            up = await store.healthy()
            claimed = await store.claim("s1")
            return down, up, claimed, await store.commit([Commit(stepped(claimed, 2.0), 1)])

        down, up, claimed, applied = run(server.url, body)
    finally:
        server.stop()
        for again in restarted:
            again.stop()
    assert (down, up) == (False, True)
    assert claimed.last_seq == 1 and claimed.epoch == 2 and float(claimed.state[0][0, 0]) == 1.0
    assert applied == [True]


def test_a_frozen_redis_times_out_as_store_unavailable(tmp_path):
    server = start_redis(tmp_path / "redis")
    try:
        server.signal(signal.SIGSTOP)

        async def body(store: RedisStore):
            with pytest.raises(StoreUnavailable, match="Timeout"):
                await store.claim("s1")
            return await store.healthy()

        assert run(server.url + "?socket_timeout=0.3", body) is False
    finally:
        server.stop()


def test_a_password_protected_redis(tmp_path):
    server = start_redis(tmp_path / "redis", password="s3cret")
    try:
        async def body(store: RedisStore):
            await store.insert(make_record())
            return (await store.claim("s1")).epoch, store.describe

        epoch, describe = run(server.url, body)
        assert epoch == 2 and "s3cret" not in describe and "***" in describe
        wrong = server.url.replace("s3cret", "wrong")
        with pytest.raises(StoreUnavailable, match="invalid username-password|WRONGPASS"):
            run(wrong, lambda s: s.claim("s1"))
    finally:
        server.stop()


def test_a_tls_redis_over_rediss(tmp_path):
    from tls_certs import have_openssl, make_pki

    if not have_openssl():
        pytest.skip("the openssl command line is needed to make test certificates")
    pki = make_pki(tmp_path / "pki")
    server = start_redis(tmp_path / "redis", tls=(pki.server_cert, pki.server_key, pki.ca))
    try:
        async def body(store: RedisStore):
            await store.insert(make_record())
            return (await store.claim("s1")).epoch

        assert server.url.startswith("rediss://")
        assert run(server.url, body) == 2
        plain = server.url.replace("rediss://", "redis://").split("?")[0]  # TLS is all this Redis speaks
        with pytest.raises(StoreUnavailable):
            run(plain + "?socket_timeout=1", lambda s: s.claim("s1"))
    finally:
        server.stop()


def test_the_key_prefix_separates_stores_on_one_redis(redis_server):
    async def body(store: RedisStore):
        await store.insert(make_record())
        other = RedisStore.from_url(redis_server.url + "?prefix=other:", 300.0)
        try:
            return await other.claim("s1"), await store._redis.keys("*")
        finally:
            await other.close()

    claimed, keys = run(redis_server.url, body)
    assert claimed is None and keys == [b"rnnpolicy:s:s1"]


def test_open_store_chooses_by_url():
    assert isinstance(open_store("", 300.0), MemoryStore)
    store = open_store("redis://:pw@127.0.0.1:1/2?count_commits=1&tombstone_ttl=60", 300.0)
    assert isinstance(store, RedisStore) and store.write_through and store.count_commits
    assert store.describe == "redis://:***@127.0.0.1:1/2?count_commits=1&tombstone_ttl=60"
    with pytest.raises(ValueError, match="expected a redis://, rediss:// or unix:// URL.*got scheme 'http'"):
        open_store("http://127.0.0.1:1", 300.0)
    with pytest.raises(ValueError, match="count_commits must be 0 or 1, got 'yes'"):
        open_store("redis://127.0.0.1:1?count_commits=yes", 300.0)
    with pytest.raises(ValueError, match="tombstone_ttl must be seconds, got 'soon'"):
        open_store("redis://127.0.0.1:1?tombstone_ttl=soon", 300.0)
    with pytest.raises(ValueError, match="ttl must be >= 0"):
        open_store("redis://127.0.0.1:1", -1.0)


def test_redacted_url_hides_only_the_password():
    assert redacted_url("rediss://user:pw@host:6380/1") == "rediss://user:***@host:6380/1"
    assert redacted_url("redis://host:6379/0") == "redis://host:6379/0"
