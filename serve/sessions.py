"""The session store: ids, the session limit, idle expiry, seq ordering, and per-model state slots.

Each model's hidden states live in preallocated arrays ``(layers, capacity, hidden)`` (one
per state tensor), one slot per session, gathered and scattered by slot index. Beside them
each slot caches its session's last packed output row, which answers a repeated seq. The
Python-side :class:`Session` record holds only ids and counters.

Ordering: :meth:`SessionRegistry.admit` checks a step's seq against the session's last one
(repeat: answer from the cache; next: admit; other: FAILED_PRECONDITION) and marks the
session busy, so a session has at most one step in flight; a step that arrives while its
session is busy waits in that session's queue and is admitted when the step before it ends.

Tombstones: the ids of the latest closed or expired sessions are remembered, each as one wall
time in a ``closed`` or ``expired`` dict (about 150 bytes per id, the message is formatted only
when a call names the id), so a later call can say "was closed at ..." or "expired at ...".
They are capped at :func:`tombstone_cap` ``(max_sessions)`` = 4 x max_sessions, at least 4,096
and at most 100,000 (about 15 MB); the oldest are forgotten first and then answer "unknown session".
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Literal

import grpc
import numpy as np

from rnnpolicy.serve.batcher import Chunk, Job
from rnnpolicy.serve.errors import ServeError

if TYPE_CHECKING:
    from rnnpolicy.serve.model import ServedModel

__all__ = ["Admission", "Session", "SessionRegistry", "SlotArrays", "tombstone_cap"]

Admission = Literal["ready", "cached", "queued"]

_TOMBSTONES_MIN = 4096
_TOMBSTONES_MAX = 100_000
_TOMBSTONES_PER_SESSION = 4


def tombstone_cap(max_sessions: int) -> int:
    """How many closed or expired session ids a registry of ``max_sessions`` remembers (oldest forgotten first)."""
    return min(_TOMBSTONES_MAX, max(_TOMBSTONES_MIN, _TOMBSTONES_PER_SESSION * max_sessions))


class SlotArrays:
    """One model's preallocated per-session arrays, indexed by slot."""

    def __init__(self, state_shapes: list[tuple[int, int]], out_width: int, capacity: int) -> None:
        # np.zeros maps untouched pages lazily: an unused slot costs no resident memory.
        self.state = tuple(np.zeros((layers, capacity, hidden), dtype=np.float32) for layers, hidden in state_shapes)
        self.last_out = np.zeros((capacity, out_width), dtype=np.float32)
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))  # a stack: reuse recently used (resident) slots

    def take(self) -> int:
        slot = self._free.pop()
        self.zero(slot)
        return slot

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

    def zero(self, slot: int) -> None:
        for array in self.state:
            array[:, slot, :] = 0.0


class Session:
    """One session's bookkeeping (its state lives in the model's :class:`SlotArrays`)."""

    __slots__ = ("session_id", "model", "slot", "rows", "last_seq", "busy", "pending", "last_used", "seed", "rng")

    def __init__(self, session_id: str, model: ServedModel, slot: int, seed: int | None, now: float) -> None:
        self.session_id = session_id
        self.model = model
        self.slot = slot
        self.rows = np.array([slot], dtype=np.intp)  # (1,) the slot as an index array, made once
        self.last_seq = 0
        self.busy = False
        self.pending: deque[Chunk] | None = None
        self.last_used = now
        self.seed = seed
        self.rng: np.random.Generator | None = None

    def generator(self) -> np.random.Generator:
        """This session's action-sampling generator (seeded by CreateSession's seed), made on first use."""
        if self.rng is None:
            self.rng = np.random.default_rng(self.seed)
        return self.rng


class SessionRegistry:
    """All sessions of all models: lookup by id, the limit, TTL expiry and step admission."""

    def __init__(self, max_sessions: int = 10_000, ttl: float = 300.0, clock=time.monotonic, wall=time.time) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if ttl < 0:
            raise ValueError(f"session TTL must be >= 0 seconds (0 disables expiry), got {ttl}")
        self.max_sessions = max_sessions
        self.ttl = float(ttl)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._sessions: dict[str, Session] = {}
        self._waiters = 0  # threads in _wait_idle: finish() notifies only when there are some
        # Tombstones: id -> wall time it was closed / expired; _gone_order is their FIFO for the cap.
        self._closed: dict[str, float] = {}
        self._expired: dict[str, float] = {}
        self._gone_order: deque[str] = deque()
        self.tombstone_cap = tombstone_cap(max_sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def tombstones(self) -> int:
        """How many closed or expired session ids are remembered (at most ``tombstone_cap``)."""
        return len(self._gone_order)

    # ------------------------------------------------------------------ lifecycle

    def create(self, model: ServedModel, seed: int | None = None) -> Session:
        now = self._clock()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                self._expire_idle(now)
            if len(self._sessions) >= self.max_sessions:
                raise self._full(now)
            session_id = secrets.token_urlsafe(18)
            session = Session(session_id, model, model.slots.take(), seed, now)
            self._sessions[session_id] = session
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            session = self._lookup(session_id, self._clock())
            while session.busy:
                self._wait_idle()
            if self._sessions.get(session_id) is session:
                self._remove(session, self._closed, self._wall())

    def expire_idle(self) -> int:
        """Expire every session idle for longer than the TTL; return how many."""
        with self._lock:
            return self._expire_idle(self._clock())

    def peek(self, session_id: str) -> Session:
        """The session ``session_id`` without taking the lock (a dict read), for the step path:
        :meth:`admit` re-checks under the lock that it is still open and not expired. An id
        not open answers as :meth:`get` does."""
        session = self._sessions.get(session_id)
        return session if session is not None else self.get(session_id)

    def get(self, session_id: str) -> Session:
        """The live session ``session_id``: NOT_FOUND (saying expired or closed, and when) otherwise."""
        with self._lock:
            return self._lookup(session_id, self._clock())

    def with_idle_session(self, session_id: str, action) -> object:
        """Run ``action(session)`` once no step of the session is in flight (for state reads, writes, resets)."""
        with self._lock:
            session = self._lookup(session_id, self._clock())
            while session.busy:
                self._wait_idle()
            session.last_used = self._clock()
            return action(session)

    # ----------------------------------------------------------------- stepping

    def admit(self, session: Session, seq: int, chunk: Chunk) -> tuple[Admission, np.ndarray | None]:
        """Check a step's seq: ``ready`` (session now busy; submit ``chunk``), ``cached`` (a repeat:
        here is the cached row), or ``queued`` (the session is busy; ``chunk`` waits its turn).

        Raises NOT_FOUND when the session is gone and FAILED_PRECONDITION for a seq out of order.
        """
        with self._lock:
            now = self._clock()
            if (self._sessions.get(session.session_id) is not session
                    or (self.ttl and not session.busy and now - session.last_used > self.ttl)):
                self._lookup(session.session_id, now)  # NOT_FOUND: closed meanwhile, or expired by now
            admission = self._admit(session, seq, None)
            if admission == "cached":
                return admission, session.model.slots.last_out[session.slot].copy()
            if admission == "queued":
                if session.pending is None:
                    session.pending = deque()
                session.pending.append(chunk)
            return admission, None

    def admit_rows(self, session_ids: list[str], seqs: list[int], model: ServedModel | None,
                   job: Job, make_pending) -> tuple[ServedModel | None, list[int], list[Session]]:
        """Admit a StepBatch's rows under one lock hold, all on one model (the first live row's).

        Rows that fail are failed on ``job``, repeats resolved from the cache, rows whose session
        is busy queued as ``make_pending(row, session)``. Returns the model and the ready rows.
        """
        ready_rows: list[int] = []
        ready_sessions: list[Session] = []
        now = self._clock()
        with self._lock:
            for row, (session_id, seq) in enumerate(zip(session_ids, seqs)):
                try:
                    session = self._lookup(session_id, now)
                    if model is None:
                        model = session.model
                    admission = self._admit(session, seq, model)
                except ServeError as exc:
                    job.fail(row, exc.code, exc.message)
                    continue
                if admission == "ready":
                    ready_rows.append(row)
                    ready_sessions.append(session)
                elif admission == "cached":
                    job.resolve([row], session.model.slots.last_out[session.slot][None])
                else:
                    if session.pending is None:
                        session.pending = deque()
                    session.pending.append(make_pending(row, session))
        return model, ready_rows, ready_sessions

    def finish(self, sessions: list[Session], seqs: list[int] | None) -> list[Chunk]:
        """Steps of ``sessions`` ended (``seqs`` applied, or None when they failed and nothing advanced).

        Returns queued chunks that are now admitted and must be submitted; queued steps that
        repeat or fail are resolved here.
        """
        now = self._clock()
        ready: list[Chunk] = []
        with self._lock:
            for i, session in enumerate(sessions):
                if seqs is not None:
                    session.last_seq = seqs[i]
                session.busy = False
                session.last_used = now
                while session.pending:
                    chunk = session.pending.popleft()
                    try:
                        admission = self._admit(session, chunk.seqs[0], None)
                    except ServeError as exc:
                        chunk.job.fail(int(chunk.rows[0]), exc.code, exc.message)
                        continue
                    if admission == "cached":
                        chunk.job.resolve(chunk.rows, session.model.slots.last_out[session.slot][None])
                        continue
                    ready.append(chunk)
                    break
                if not session.pending:
                    session.pending = None
            if self._waiters:
                self._idle.notify_all()
        return ready

    # ----------------------------------------------------------------- internals

    def _wait_idle(self) -> None:
        """Wait (lock held) until some step finishes."""
        self._waiters += 1
        try:
            self._idle.wait()
        finally:
            self._waiters -= 1

    def _admit(self, session: Session, seq: int, model: ServedModel | None) -> Admission:
        if model is not None and session.model is not model:
            raise ServeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"session {session.session_id!r} is on model {session.model.name!r}, not {model.name!r}: "
                f"a StepBatch takes sessions of one model",
            )
        if session.busy:
            return "queued"
        if seq == session.last_seq and seq > 0:
            return "cached"
        if seq != session.last_seq + 1:
            raise ServeError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {session.session_id!r}: seq {seq} is out of order, expected {session.last_seq + 1} "
                f"(or {session.last_seq} to repeat the last step)" if session.last_seq else
                f"session {session.session_id!r}: seq {seq} is out of order, expected 1 for the first step",
            )
        session.busy = True
        session.last_used = self._clock()
        return "ready"

    def _lookup(self, session_id: str, now: float) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            closed_at = self._closed.get(session_id)
            if closed_at is not None:
                raise ServeError(grpc.StatusCode.NOT_FOUND, f"session {session_id!r} {self._closed_fate(closed_at)}")
            expired_at = self._expired.get(session_id)
            if expired_at is not None:
                raise ServeError(grpc.StatusCode.NOT_FOUND, f"session {session_id!r} {self._expired_fate(expired_at)}")
            raise ServeError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown session {session_id!r}: expected an id returned by CreateSession",
            )
        if self.ttl and not session.busy and now - session.last_used > self.ttl:
            fate = self._expire(session, now)
            raise ServeError(grpc.StatusCode.NOT_FOUND, f"session {session_id!r} {fate}")
        return session

    def _expire(self, session: Session, now: float) -> str:
        expired_at = self._wall() - (now - session.last_used - self.ttl)
        self._remove(session, self._expired, expired_at)
        return self._expired_fate(expired_at)

    def _closed_fate(self, wall: float) -> str:
        return f"was closed at {self._stamp(wall)}"

    def _expired_fate(self, wall: float) -> str:
        return f"expired at {self._stamp(wall)} after {self.ttl:g} s idle (session TTL); create a new session"

    def _expire_idle(self, now: float) -> int:
        if not self.ttl:
            return 0
        stale = [s for s in self._sessions.values() if not s.busy and now - s.last_used > self.ttl]
        for session in stale:
            self._expire(session, now)
        return len(stale)

    def _remove(self, session: Session, tombstones: dict[str, float], wall: float) -> None:
        session_id = session.session_id
        del self._sessions[session_id]
        session.model.slots.give_back(session.slot)
        order = self._gone_order
        if len(order) >= self.tombstone_cap:
            oldest = order.popleft()
            if self._closed.pop(oldest, None) is None:
                self._expired.pop(oldest, None)
        tombstones[session_id] = wall
        order.append(session_id)

    def _full(self, now: float) -> ServeError:
        if self.ttl and self._sessions:
            oldest = min(s.last_used for s in self._sessions.values())
            retry = max(0.0, oldest + self.ttl - now)
            hint = f"retry in {retry:.3g} s, when the longest-idle session expires, or close sessions"
        else:
            retry = 1.0
            hint = "retry after closing sessions"
        return ServeError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server holds its maximum of {self.max_sessions} sessions; {hint}",
            (("retry-after-ms", str(int(retry * 1000) + 1)),),
        )

    @staticmethod
    def _stamp(wall: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
