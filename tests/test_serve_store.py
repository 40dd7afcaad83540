"""Session records and the stores over them: the protobuf record format, the in-memory store, --state-dir snapshots."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rnnpolicy.serve.persistence import SnapshotError, StateDirStore
from rnnpolicy.serve.records import RecordError, SessionRecord, Tombstone, decode_record, encode_record
from rnnpolicy.serve.store import Commit, MemoryStore, Snapshot
from rnnpolicy.v1 import session_record_pb2 as rpb


def _record(session_id: str = "abc", seed: int | None = 7) -> SessionRecord:
    return SessionRecord(session_id=session_id, model="m", version="0123456789ab", principal="alice", seed=seed,
                         rng={"bit_generator": "PCG64", "state": {"state": 2**127 + 3, "inc": 5}},
                         last_seq=12, last_used=1.7e9, epoch=3,
                         state=(np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((2, 4), np.float32)),
                         state_names=("state_h", "state_c"), last_out=np.array([0.5, -1.0, 2.0], np.float32),
                         affinity="game-7")


def _same(a: SessionRecord, b: SessionRecord) -> bool:
    return (a.session_id, a.model, a.version, a.principal, a.seed, a.rng, a.last_seq, a.last_used, a.epoch,
            a.state_names, a.affinity) == (b.session_id, b.model, b.version, b.principal, b.seed, b.rng, b.last_seq,
                                           b.last_used, b.epoch, b.state_names, b.affinity) \
        and all(np.array_equal(x, y) for x, y in zip(a.state, b.state)) and np.array_equal(a.last_out, b.last_out)


def test_a_record_round_trips_exactly_through_its_bytes():
    for record in (_record(), _record(seed=None)):
        back = decode_record(encode_record(record))
        assert _same(back, record) and back.state[0].dtype == np.float32


def test_the_encoded_bytes_are_the_message_record_message_builds():
    """encode_record writes the float arrays itself: the same message, byte for byte once re-serialised."""
    from rnnpolicy.serve.records import record_message

    big = _record()
    big.state = tuple(np.random.default_rng(0).normal(size=(3, 200)).astype(np.float32) for _ in big.state)
    big.last_seq = 2**40
    for record in (_record(), _record(seed=None), big):
        parsed = rpb.SessionRecord.FromString(encode_record(record))
        assert parsed == record_message(record)
        assert parsed.SerializeToString() == record_message(record).SerializeToString()


def test_corrupt_bytes_and_a_foreign_format_version_are_refused_naming_the_problem():
    with pytest.raises(RecordError, match=r"not a session record \(3 bytes\)"):
        decode_record(b"\xff\xff\xff")
    message = rpb.SessionRecord.FromString(encode_record(_record()))
    message.format_version = 9
    with pytest.raises(RecordError, match=r"format version 9, expected 1"):
        decode_record(message.SerializeToString())
    message.format_version = 1
    del message.state[0].data[:]
    with pytest.raises(RecordError, match=r"state 'state_h' has 0 values, expected layers 2 x hidden 4"):
        decode_record(message.SerializeToString())


def test_the_memory_store_keeps_nothing_and_accepts_every_commit():
    store = MemoryStore()
    assert not store.write_through
    assert asyncio.run(store.claim("abc")) is None
    assert asyncio.run(store.commit([Commit(_record(), 11)])) == [True]
    assert store.restore().records == []


def test_state_dir_snapshots_round_trip_and_are_written_atomically(tmp_path):
    store = StateDirStore(tmp_path / "state")
    records = [_record("a"), _record("b", seed=None)]
    tombstones = [Tombstone("gone", "closed", 1.7e9, "bob")]
    store.checkpoint(Snapshot(records, tombstones))
    assert not (tmp_path / "state" / "sessions.snapshot.tmp").exists()
    back = StateDirStore(tmp_path / "state").restore()
    assert all(_same(x, y) for x, y in zip(back.records, records)) and len(back.records) == 2
    assert back.tombstones == tombstones


def test_a_version_1_or_corrupt_snapshot_is_refused_with_the_reason(tmp_path):
    store = StateDirStore(tmp_path)
    store.snapshot.write_bytes(b"PK\x03\x04 an old npz archive")
    with pytest.raises(SnapshotError, match=r"format version 1 \(an .npz archive"):
        store.restore()
    store.snapshot.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(SnapshotError, match=r"unreadable snapshot \(4 bytes\)"):
        store.restore()
    aside = store.reject("test")
    assert aside.name.startswith("sessions.snapshot.rejected-") and not store.snapshot.exists()
    assert store.restore().records == []
