"""Step sequencing: the one rule every admission path (Step, StepStream, StepBatch) uses."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rnnpolicy.serve.directory import Session
from rnnpolicy.serve.errors import ServeError
from rnnpolicy.serve.sequencing import admit, enqueue, finish, finish_rows, next_queued, until_idle


def _session(last_seq: int = 0) -> Session:
    session = Session("s1", model=None, slot=0, seed=None, now=0.0)
    session.last_seq = last_seq
    return session


def test_the_next_seq_is_ready_and_makes_the_session_busy():
    session = _session(3)
    assert admit(session, 4) == "ready" and session.busy
    finish(session, 4)
    assert session.last_seq == 4 and not session.busy


def test_a_repeat_of_the_last_seq_is_cached_and_changes_nothing():
    session = _session(3)
    assert admit(session, 3) == "cached" and not session.busy and session.last_seq == 3


@pytest.mark.parametrize("last, seq, expected", [(0, 0, "expected 1 for the first step"), (0, 2, "expected 1"),
                                                 (3, 5, "expected 4 (or 3 to repeat"), (3, 1, "expected 4")])
def test_a_gap_or_an_old_seq_is_refused_naming_the_expected_one(last, seq, expected):
    session = _session(last)
    with pytest.raises(ServeError, match=r"out of order") as err:
        admit(session, seq)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and expected in err.value.message
    assert err.value.expected_seq == last + 1 and dict(err.value.trailing)["expected-seq"] == str(last + 1)
    assert not session.busy and session.last_seq == last


def test_a_busy_session_queues_steps_in_order_and_a_failed_step_advances_nothing():
    session = _session(0)
    assert admit(session, 1) == "ready"
    assert admit(session, 2) == "queued"  # whatever the seq: decided when its turn comes
    enqueue(session, "second")
    enqueue(session, "third")
    finish(session, None)  # the step failed: seq stays 0
    assert session.last_seq == 0 and not session.busy
    assert next_queued(session) == "second" and next_queued(session) == "third" and next_queued(session) is None
    assert session.pending is None


def test_until_idle_returns_once_the_step_in_flight_ends():
    async def scenario() -> list[str]:
        session = _session(0)
        admit(session, 1)
        seen = []

        async def waiter():
            await until_idle(session)
            seen.append(f"idle at seq {session.last_seq}")

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        assert not seen
        finish(session, 1)
        await task
        return seen

    assert asyncio.run(scenario()) == ["idle at seq 1"]


def test_finish_rows_ends_a_batch_like_finish_per_row_and_returns_the_sessions_with_steps_queued():
    async def main():
        sessions = [_session(3), _session(7), _session(1)]
        for session in sessions:
            admit(session, session.last_seq + 1)
        enqueue(sessions[1], "next step")
        idle = asyncio.ensure_future(until_idle(sessions[2]))
        await asyncio.sleep(0)
        assert finish_rows(sessions, [4, 8, 2], now=12.5) == [sessions[1]]
        await asyncio.wait_for(idle, 1)  # a waiter is woken as by finish
        assert [s.last_seq for s in sessions] == [4, 8, 2] and [s.last_used for s in sessions] == [12.5] * 3
        assert not any(s.busy for s in sessions) and next_queued(sessions[1]) == "next step"
        for session in sessions:
            admit(session, session.last_seq + 1)
        assert finish_rows(sessions, None, now=13.0) == []  # failed: nothing advanced
        assert [s.last_seq for s in sessions] == [4, 8, 2] and not any(s.busy for s in sessions)

    asyncio.run(main())
