"""Step sequencing: the seq rules, one step in flight per session, and the steps queued behind it.

One rule function, :func:`admit`, decides every step, whether it came as a unary ``Step``, a
``StepStream`` message or a ``StepBatch`` row:

- the session is busy (a step in flight): ``"queued"``, the step waits in the session's queue
  (:func:`enqueue`) and is admitted again when the step before it ends (:func:`finish`);
- ``seq`` repeats the last applied one: ``"cached"``, answered from the cached row, nothing advances;
- ``seq`` is the next one: ``"ready"``, the session is now busy until :func:`finish`;
- anything else: ``ServeError(FAILED_PRECONDITION)`` naming the expected seq.

All of it runs on the server's event loop: no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Literal, Sequence

import grpc

from rnnpolicy.serve.errors import ServeError

if TYPE_CHECKING:
    from rnnpolicy.serve.directory import Session

__all__ = ["Admission", "admit", "enqueue", "finish", "finish_rows", "next_queued", "out_of_order", "until_idle"]

Admission = Literal["ready", "cached", "queued"]


def admit(session: Session, seq: int) -> Admission:
    """Decide a step of ``session`` with ``seq`` (see the module docstring); ``ready`` marks the session busy."""
    if session.busy:
        return "queued"
    last = session.last_seq
    if seq == last + 1:
        session.busy = True
        return "ready"
    if seq == last and seq > 0:
        return "cached"
    raise out_of_order(session, seq)


def out_of_order(session: Session, seq: int) -> ServeError:
    last = session.last_seq
    expected = last + 1
    return ServeError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"session {session.session_id!r}: seq {seq} is out of order, expected {expected} "
        f"(or {last} to repeat the last step)" if last else
        f"session {session.session_id!r}: seq {seq} is out of order, expected 1 for the first step",
        expected_seq=expected,
    )


def enqueue(session: Session, waiting: object) -> None:
    """Queue ``waiting`` (a step to admit again later) behind the session's step in flight."""
    if session.pending is None:
        session.pending = deque()
    session.pending.append(waiting)


def finish(session: Session, seq: int | None) -> None:
    """The session's step in flight ended: ``seq`` applied, or None when it failed and nothing advanced."""
    if seq is not None:
        session.last_seq = seq
    session.busy = False
    if session.idle_waiters:
        _wake_idle_waiters(session)


def _wake_idle_waiters(session: Session) -> None:
    """Resolve the futures :func:`until_idle` left on the session (it has no step in flight now)."""
    waiters, session.idle_waiters = session.idle_waiters, None
    for future in waiters:
        if not future.done():
            future.set_result(None)


def finish_rows(sessions: Sequence[Session], seqs: Sequence[int] | None, now: float) -> list[Session]:
    """:func:`finish` for the sessions of one batch (``seqs`` applied, or None: none advanced), each last used at
    ``now``; returns those with steps queued behind (the caller admits them). One loop, no call per row."""
    queued = []
    for i, session in enumerate(sessions):
        if seqs is not None:
            session.last_seq = seqs[i]
        session.busy = False
        session.last_used = now
        if session.idle_waiters:
            _wake_idle_waiters(session)
        if session.pending is not None:
            queued.append(session)
    return queued


def next_queued(session: Session) -> object | None:
    """The oldest step queued behind the one that just ended (None: none); the caller admits it."""
    pending = session.pending
    if not pending:
        return None
    waiting = pending.popleft()
    if not pending:
        session.pending = None
    return waiting


async def until_idle(session: Session) -> None:
    """Return once the session has no step in flight (for state reads and writes, closing, migrating)."""
    while session.busy:
        future = asyncio.get_running_loop().create_future()
        if session.idle_waiters is None:
            session.idle_waiters = []
        session.idle_waiters.append(future)
        await future
