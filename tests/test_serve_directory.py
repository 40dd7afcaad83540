"""The session directory: ids, ownership, limits, idle expiry with an injected clock, tombstones, records."""

from __future__ import annotations

import tracemalloc

import grpc
import numpy as np
import pytest

from rnnpolicy.serve.directory import SessionDirectory, tombstone_cap
from rnnpolicy.serve.errors import ServeError
from rnnpolicy.serve.records import RecordError
from rnnpolicy.serve.slots import SlotArrays
from rnnpolicy.spec import StateTensorSpec


class _Spec:
    state_tensors = (StateTensorSpec("state_h", 1, 4),)


class _Layout:
    width = 3


class _Model:
    """Just enough of a ServedModel for the directory: a name, version, spec and state slots."""

    spec = _Spec()
    layout = _Layout()

    def __init__(self, capacity: int = 8, name: str = "m", version: str = "v1") -> None:
        self.name = name
        self.version = version
        self.slots = SlotArrays([(1, 4)], 3, capacity)


def _error(call, *args) -> ServeError:
    with pytest.raises(ServeError) as err:
        call(*args)
    return err.value


def _not_found(directory: SessionDirectory, session_id: str) -> str:
    error = _error(directory.lookup, session_id)
    assert error.code == grpc.StatusCode.NOT_FOUND
    return error.message


def test_tombstone_cap_scales_with_max_sessions():
    assert tombstone_cap(1) == 4096 and tombstone_cap(1000) == 4096
    assert tombstone_cap(10_000) == 40_000
    assert tombstone_cap(10**6) == 100_000
    assert SessionDirectory(max_sessions=5000, ttl=0).tombstone_cap == 20_000


def test_tombstones_say_closed_or_expired_and_forget_the_oldest_beyond_the_cap():
    now = [1000.0]
    directory = SessionDirectory(max_sessions=2, ttl=5.0, clock=lambda: now[0], wall=lambda: now[0] + 1.7e9)
    model = _Model(2)
    expired = directory.create(model).session_id
    now[0] += 6.0  # idle past the TTL
    first = _not_found(directory, expired)
    assert first.startswith(f"session {expired!r} expired at 2023-11-14T22:") and "after 5 s idle" in first
    assert _not_found(directory, expired) == first  # formatted again from the tombstone, same words
    closed = directory.create(model)
    directory.close(closed)
    assert "was closed at 2023-11-14T22:" in _not_found(directory, closed.session_id)
    cap = directory.tombstone_cap
    ids = []
    for _ in range(cap):
        session = directory.create(model)
        directory.close(session)
        ids.append(session.session_id)
    assert directory.tombstones == cap
    assert "unknown session" in _not_found(directory, expired)  # the two oldest were forgotten
    assert "unknown session" in _not_found(directory, closed.session_id)
    assert "was closed at" in _not_found(directory, ids[0]) and "was closed at" in _not_found(directory, ids[-1])
    tracemalloc.start()  # at the cap, more closed sessions cost no more memory
    try:
        for round_ in range(3):
            for _ in range(cap):
                directory.close(directory.create(model))
            if round_ == 0:
                base = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert directory.tombstones == cap and len(directory) == 0
    assert grown < 64 * 1024, f"tombstones grew by {grown} bytes past their cap"


def test_idle_expiry_follows_the_injected_clock_and_spares_busy_sessions():
    now = [0.0]
    directory = SessionDirectory(max_sessions=4, ttl=0.3, clock=lambda: now[0])
    model = _Model()
    idle, busy = directory.create(model), directory.create(model)
    busy.busy = True
    now[0] = 0.2
    assert directory.expire_idle() == [] and len(directory) == 2
    now[0] = 0.31
    [tombstone] = directory.expire_idle()
    assert tombstone.session_id == idle.session_id and tombstone.fate == "expired"
    assert directory.held(busy.session_id) is busy and directory.held(idle.session_id) is None
    assert model.slots.capacity - model.slots.free == 1  # the expired session's slot went back


def test_another_principals_session_is_denied_exactly_like_an_unknown_id():
    directory = SessionDirectory(max_sessions=8, ttl=0, private_ids=True)
    mine = directory.create(_Model(), principal="alice")
    assert directory.lookup(mine.session_id, "alice") is mine
    denied = _error(directory.lookup, mine.session_id, "bob")
    unknown = _error(directory.lookup, "no-such-id", "bob")
    assert denied.code == unknown.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.message.replace(mine.session_id, "ID") == unknown.message.replace("no-such-id", "ID")
    directory.close(mine)
    assert "was closed at" in _error(directory.lookup, mine.session_id, "alice").message  # the owner learns its fate
    assert _error(directory.lookup, mine.session_id, "bob").code == grpc.StatusCode.PERMISSION_DENIED  # nobody else


def test_session_limits_refuse_with_resource_exhausted_and_a_retry_hint():
    now = [0.0]
    directory = SessionDirectory(max_sessions=3, ttl=10.0, clock=lambda: now[0], max_sessions_per_principal=2)
    model = _Model()
    first = directory.create(model, principal="alice")
    directory.create(model, principal="alice")
    full = _error(directory.create, model, None, "alice")
    assert full.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "principal 'alice' holds its maximum of 2" in full.message
    directory.create(model, principal="bob")  # others are not affected
    now[0] = 4.0
    full = _error(directory.create, model, None, "carol")
    assert full.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum of 3 sessions; retry in 6 s" in full.message
    assert dict(full.trailing)["retry-after-ms"] == "6001"
    directory.close(first)
    directory.create(model, principal="alice")  # a closed session frees its principal's place


def test_a_record_round_trips_through_adopt_and_refuses_other_shapes():
    model = _Model()
    directory = SessionDirectory(max_sessions=4, ttl=0)
    session = directory.create(model, seed=7, principal="p")
    model.slots.write(session.slot, (np.arange(4, dtype=np.float32).reshape(1, 4),))
    model.slots.set_cached(session.slot, np.array([1, 2, 3], np.float32))
    session.last_seq = 5
    session.generator().random()
    record = directory.record(session)
    directory.drop(session)
    assert len(directory) == 0 and directory.tombstones == 0  # dropped: no tombstone
    other = SessionDirectory(max_sessions=4, ttl=0)
    back = other.adopt(record, model)
    assert (back.session_id, back.principal, back.last_seq, back.seed) == (session.session_id, "p", 5, 7)
    assert np.array_equal(model.slots.read(back.slot)[0], record.state[0])
    assert np.array_equal(model.slots.cached(back.slot), [1, 2, 3])
    assert back.generator().random() == session.rng.random()  # the generator continues where it was
    record.state = (np.zeros((2, 4), np.float32),)
    with pytest.raises(RecordError, match=r"differ from model 'm'"):
        SessionDirectory().adopt(record, model)


def test_move_carries_state_and_cached_row_to_another_version():
    old, new = _Model(version="v1"), _Model(version="v2")
    directory = SessionDirectory(max_sessions=4, ttl=0)
    session = directory.create(old)
    old.slots.write(session.slot, (np.full((1, 4), 0.5, np.float32),))
    directory.move(session, new)
    assert session.model is new and directory.sessions_of(new) == 1 and directory.sessions_of(old) == 0
    assert np.array_equal(new.slots.read(session.slot)[0], np.full((1, 4), 0.5, np.float32))
