"""The session store: ids, the session limit, idle expiry, seq ordering, and per-model state slots.

Each model's hidden states live in preallocated arrays ``(layers, capacity, hidden)`` (one
per state tensor), one slot per session, gathered and scattered by slot index. Beside them
each slot caches its session's last packed output row, which answers a repeated seq. The
Python-side :class:`Session` record holds only ids and counters.

Ordering: :meth:`SessionRegistry.admit` checks a step's seq against the session's last one
(repeat: answer from the cache; next: admit; other: FAILED_PRECONDITION) and marks the
session busy, so a session has at most one step in flight; a step that arrives while its
session is busy waits in that session's queue and is admitted when the step before it ends.

Ownership: a session belongs to the principal that created it ("" when authentication is off).
Another principal naming it gets PERMISSION_DENIED with the same words as for an id that never
existed, so ids cannot be probed; with ``private_ids`` (authentication on) an unknown id answers
PERMISSION_DENIED too, for the same reason.

Tombstones: the ids of the latest closed or expired sessions are remembered, each as its wall
time and owner in a ``closed`` or ``expired`` dict (about 200 bytes per id, the message is
formatted only when a call names the id), so a later call can say "was closed at ..." or "expired at ...".
They are capped at :func:`tombstone_cap` ``(max_sessions)`` = 4 x max_sessions, at least 4,096
and at most 100,000 (about 15 MB); the oldest are forgotten first and then answer "unknown session".
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

import grpc
import numpy as np

from rnnpolicy.serve.batcher import Chunk, Job
from rnnpolicy.serve.errors import ServeError, shown

if TYPE_CHECKING:
    from rnnpolicy.serve.model import ServedModel

__all__ = ["Admission", "Session", "SessionEvent", "SessionRecord", "SessionRegistry", "SlotArrays", "tombstone_cap"]

Admission = Literal["ready", "cached", "queued"]
SessionEvent = Literal["created", "closed", "expired", "refused", "migrated", "restored"]
EventListener = Callable[[SessionEvent, "Session | None", dict], None]

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
        self.bytes_per_slot = sum(a.itemsize * a.shape[0] * a.shape[2] for a in self.state) + self.last_out.itemsize * out_width
        """Memory one session's state and cached output row take."""

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

    __slots__ = ("session_id", "principal", "model", "slot", "rows", "last_seq", "busy", "pending", "last_used",
                 "seed", "rng")

    def __init__(self, session_id: str, model: ServedModel, slot: int, seed: int | None, now: float,
                 principal: str = "") -> None:
        self.session_id = session_id
        self.principal = principal
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


@dataclass
class SessionRecord:
    """A session as a snapshot holds it: everything needed to continue it elsewhere (see serve.persistence)."""

    session_id: str
    principal: str
    seed: int | None
    rng: dict | None
    """The sampling generator's ``bit_generator.state`` (None: not used yet)."""
    last_seq: int
    idle_seconds: float
    """Seconds since the session's last call when the snapshot was taken."""
    state: tuple[np.ndarray, ...]
    """Each state tensor's row ``(layers, hidden)``."""
    last_out: np.ndarray
    """The cached packed output row of the last step ``(width,)``."""


class SessionRegistry:
    """All sessions of all models: lookup by id, the limit, TTL expiry and step admission."""

    def __init__(self, max_sessions: int = 10_000, ttl: float = 300.0, clock=time.monotonic, wall=time.time, *,
                 max_sessions_per_principal: int = 0, private_ids: bool = False,
                 listener: EventListener | None = None) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if ttl < 0:
            raise ValueError(f"session TTL must be >= 0 seconds (0 disables expiry), got {ttl}")
        if max_sessions_per_principal < 0:
            raise ValueError(f"max_sessions_per_principal must be >= 0 (0: no limit), got {max_sessions_per_principal}")
        self.max_sessions = max_sessions
        self.max_sessions_per_principal = max_sessions_per_principal
        self.private_ids = private_ids
        self.listener = listener
        """Called ``(event, session, fields)`` on each lifecycle event (logs and metrics), under the lock."""
        self.ttl = float(ttl)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._sessions: dict[str, Session] = {}
        self._waiters = 0  # threads in _wait_idle: finish() notifies only when there are some
        self._per_model: Counter = Counter()      # ServedModel -> open sessions
        self._per_principal: Counter = Counter()  # principal -> open sessions
        # Tombstones: id -> (wall time it was closed / expired, owner); _gone_order is their FIFO for the cap.
        self._closed: dict[str, tuple[float, str]] = {}
        self._expired: dict[str, tuple[float, str]] = {}
        self._gone_order: deque[str] = deque()
        self.tombstone_cap = tombstone_cap(max_sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def tombstones(self) -> int:
        """How many closed or expired session ids are remembered (at most ``tombstone_cap``)."""
        return len(self._gone_order)

    def sessions_of(self, model: ServedModel) -> int:
        """Open sessions pinned to ``model`` (one version of a model)."""
        return self._per_model[model]

    # ------------------------------------------------------------------ lifecycle

    def create(self, model: ServedModel, seed: int | None = None, principal: str = "") -> Session:
        now = self._clock()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                self._expire_idle(now)
            if len(self._sessions) >= self.max_sessions:
                self._emit("refused", None, model=model.name, principal=principal, reason="max_sessions")
                raise self._full(now)
            cap = self.max_sessions_per_principal
            if cap and self._per_principal[principal] >= cap:
                self._emit("refused", None, model=model.name, principal=principal, reason="max_sessions_per_principal")
                raise ServeError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"principal {shown(principal)} holds its maximum of {cap} sessions; close some before opening more",
                    (("retry-after-ms", "1000"),),
                )
            session_id = secrets.token_urlsafe(18)
            session = Session(session_id, model, model.slots.take(), seed, now, principal)
            self._add(session)
            self._emit("created", session)
            return session

    def close(self, session_id: str, principal: str = "") -> None:
        with self._lock:
            session = self._lookup(session_id, self._clock(), principal)
            while session.busy:
                self._wait_idle()
            if self._sessions.get(session_id) is session:
                self._remove(session, self._closed, self._wall())
                self._emit("closed", session)

    def migrate(self, session_id: str, principal: str, target: ServedModel) -> Session:
        """Move the session onto ``target`` (another version of its model, compatibility checked by
        the caller): its state rows, seq and cached last response travel with it."""
        with self._lock:
            session = self._lookup(session_id, self._clock(), principal)
            while session.busy:
                self._wait_idle()
            session = self._lookup(session_id, self._clock(), principal)  # closed or expired meanwhile?
            source = session.model
            if source is target:
                return session
            slot = target.slots.take()
            for old, new in zip(source.slots.state, target.slots.state):
                new[:, slot, :] = old[:, session.slot, :]
            target.slots.last_out[slot] = source.slots.last_out[session.slot]
            source.slots.give_back(session.slot)
            self._per_model[source] -= 1
            self._per_model[target] += 1
            session.model, session.slot = target, slot
            session.rows = np.array([slot], dtype=np.intp)
            session.last_used = self._clock()
            self._emit("migrated", session, from_version=source.version)
            return session

    def expire_idle(self) -> int:
        """Expire every session idle for longer than the TTL; return how many."""
        with self._lock:
            return self._expire_idle(self._clock())

    def peek(self, session_id: str, principal: str = "") -> Session:
        """The session ``session_id`` without taking the lock (a dict read), for the step path:
        :meth:`admit` re-checks under the lock that it is still open and not expired. An id
        not open, or not ``principal``'s, answers as :meth:`get` does."""
        session = self._sessions.get(session_id)
        if session is not None and session.principal == principal:
            return session
        return self.get(session_id, principal)

    def get(self, session_id: str, principal: str = "") -> Session:
        """The live session ``session_id`` of ``principal``: NOT_FOUND (saying expired or closed, and
        when) or PERMISSION_DENIED (another principal's, or with ``private_ids`` unknown) otherwise."""
        with self._lock:
            return self._lookup(session_id, self._clock(), principal)

    def with_idle_session(self, session_id: str, action, principal: str = "") -> object:
        """Run ``action(session)`` once no step of the session is in flight (for state reads, writes, resets)."""
        with self._lock:
            session = self._lookup(session_id, self._clock(), principal)
            while session.busy:
                self._wait_idle()
            session.last_used = self._clock()
            return action(session)

    # ----------------------------------------------------------------- snapshots

    def records(self) -> tuple[dict[ServedModel, list[SessionRecord]], list[tuple[str, str, float, str]]]:
        """Every open session as a :class:`SessionRecord`, by model version, and the tombstones
        ``(session_id, "closed" | "expired", wall time, principal)``. The caller pauses the models'
        batchers first, so that no step is between writing a state and advancing its seq."""
        with self._lock:
            now = self._clock()
            by_model: dict[ServedModel, list[SessionRecord]] = {}
            for session in self._sessions.values():
                slots = session.model.slots
                by_model.setdefault(session.model, []).append(SessionRecord(
                    session_id=session.session_id, principal=session.principal, seed=session.seed,
                    rng=session.rng.bit_generator.state if session.rng is not None else None,
                    last_seq=session.last_seq, idle_seconds=max(0.0, now - session.last_used),
                    state=tuple(a[:, session.slot, :].copy() for a in slots.state),
                    last_out=slots.last_out[session.slot].copy()))
            tombstones = []
            for session_id in self._gone_order:
                kind, (wall, principal) = ("closed", self._closed[session_id]) if session_id in self._closed \
                    else ("expired", self._expired[session_id])
                tombstones.append((session_id, kind, wall, principal))
        return by_model, tombstones

    def restore(self, groups: list[tuple[ServedModel, list[SessionRecord]]],
                tombstones: list[tuple[str, str, float, str]]) -> int:
        """Reopen snapshot sessions (all or none: ``ValueError`` before any is added); return how many."""
        with self._lock:
            records = [r for _, group in groups for r in group]
            if len(self._sessions) + len(records) > self.max_sessions:
                raise ValueError(f"the snapshot holds {len(records)} sessions, more than max_sessions "
                                 f"{self.max_sessions} allows beside the {len(self._sessions)} open")
            clash = next((r.session_id for r in records if r.session_id in self._sessions), None)
            if clash is not None:
                raise ValueError(f"session {clash!r} of the snapshot is already open")
            now = self._clock()
            for model, group in groups:
                for record in group:
                    session = Session(record.session_id, model, model.slots.take(), record.seed,
                                      now - record.idle_seconds, record.principal)
                    session.last_seq = record.last_seq
                    if record.rng is not None:
                        session.rng = np.random.default_rng()
                        session.rng.bit_generator.state = record.rng
                    for array, row in zip(model.slots.state, record.state):
                        array[:, session.slot, :] = row
                    model.slots.last_out[session.slot] = record.last_out
                    self._add(session)
                    self._emit("restored", session)
            for session_id, kind, wall, principal in tombstones:
                if session_id not in self._sessions:
                    self._remember(session_id, self._closed if kind == "closed" else self._expired, wall, principal)
        return len(records)

    # ----------------------------------------------------------------- stepping

    def admit(self, session: Session, seq: int, chunk: Chunk | None = None) -> tuple[Admission, np.ndarray | None]:
        """Check a step's seq: ``ready`` (session now busy; run the step), ``cached`` (a repeat: here is
        the cached row), or ``queued`` (the session is busy; ``chunk`` waits its turn, or with no
        ``chunk`` nothing changed: admit again with one).

        Raises NOT_FOUND when the session is gone and FAILED_PRECONDITION for a seq out of order.
        """
        with self._lock:
            now = self._clock()
            if (self._sessions.get(session.session_id) is not session
                    or (self.ttl and not session.busy and now - session.last_used > self.ttl)):
                self._lookup(session.session_id, now, session.principal)  # NOT_FOUND: closed meanwhile, or expired
            admission = self._admit(session, seq, None, now)
            if admission == "cached":
                return admission, session.model.slots.last_out[session.slot].copy()
            if admission == "queued" and chunk is not None:
                if session.pending is None:
                    session.pending = deque()
                session.pending.append(chunk)
            return admission, None

    def admit_rows(self, session_ids: list[str], seqs: list[int], model: ServedModel | None,
                   job: Job, make_pending, principal: str = "") -> tuple[ServedModel | None, list[int], list[Session]]:
        """Admit a StepBatch's rows under one lock hold, all on one model (the first live row's).

        Rows that fail are failed on ``job``, repeats resolved from the cache, rows whose session
        is busy queued as ``make_pending(row, session)``. Returns the model and the ready rows.
        """
        ready_rows: list[int] = []
        ready_sessions: list[Session] = []
        now = self._clock()
        live, ttl = self._sessions, self.ttl
        with self._lock:
            for row, (session_id, seq) in enumerate(zip(session_ids, seqs)):
                session = live.get(session_id)
                # The common row in one test, as _lookup and _admit would decide it: the caller's live, idle,
                # unexpired session at its next seq, on the batch's model.
                if (session is not None and session.principal == principal and not session.busy
                        and seq == session.last_seq + 1 and (model is None or session.model is model)
                        and not (ttl and now - session.last_used > ttl)):
                    model = session.model
                    session.busy = True
                    session.last_used = now
                    ready_rows.append(row)
                    ready_sessions.append(session)
                    continue
                try:
                    session = self._lookup(session_id, now, principal)
                    if model is None:
                        model = session.model
                    admission = self._admit(session, seq, model, now)
                except ServeError as exc:
                    job.fail(row, exc.code, exc.message, exc.expected_seq)
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
                if session.pending is None:  # nothing queued behind this step: the common case
                    continue
                while session.pending:
                    chunk = session.pending.popleft()
                    try:
                        admission = self._admit(session, chunk.seqs[0], None, now)
                    except ServeError as exc:
                        chunk.job.fail(int(chunk.rows[0]), exc.code, exc.message, exc.expected_seq)
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

    def _admit(self, session: Session, seq: int, model: ServedModel | None, now: float) -> Admission:
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
            expected = session.last_seq + 1
            raise ServeError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {session.session_id!r}: seq {seq} is out of order, expected {expected} "
                f"(or {session.last_seq} to repeat the last step)" if session.last_seq else
                f"session {session.session_id!r}: seq {seq} is out of order, expected 1 for the first step",
                expected_seq=expected,
            )
        session.busy = True
        session.last_used = now
        return "ready"

    def _lookup(self, session_id: str, now: float, principal: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            closed = self._closed.get(session_id)
            if closed is not None and closed[1] == principal:
                raise ServeError(grpc.StatusCode.NOT_FOUND, f"session {shown(session_id)} {self._closed_fate(closed[0])}")
            expired = self._expired.get(session_id)
            if expired is not None and expired[1] == principal:
                raise ServeError(grpc.StatusCode.NOT_FOUND, f"session {shown(session_id)} {self._expired_fate(expired[0])}")
            if self.private_ids or closed is not None or expired is not None:
                raise self._not_yours(session_id, principal)
            raise ServeError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown session {shown(session_id)}: expected an id returned by CreateSession",
            )
        if session.principal != principal:
            raise self._not_yours(session_id, principal)
        if self.ttl and not session.busy and now - session.last_used > self.ttl:
            fate = self._expire(session, now)
            raise ServeError(grpc.StatusCode.NOT_FOUND, f"session {shown(session_id)} {fate}")
        return session

    @staticmethod
    def _not_yours(session_id: str, principal: str) -> ServeError:
        """The same answer for another principal's session and an id that does not exist: nothing to probe."""
        return ServeError(grpc.StatusCode.PERMISSION_DENIED,
                          f"session {shown(session_id)} is not an open session of principal {shown(principal)}; "
                          f"expected an id that this principal's CreateSession returned")

    def _expire(self, session: Session, now: float) -> str:
        expired_at = self._wall() - (now - session.last_used - self.ttl)
        self._remove(session, self._expired, expired_at)
        self._emit("expired", session, idle_seconds=round(now - session.last_used, 3))
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

    def _add(self, session: Session) -> None:
        self._sessions[session.session_id] = session
        self._per_model[session.model] += 1
        self._per_principal[session.principal] += 1

    def _remove(self, session: Session, tombstones: dict[str, tuple[float, str]], wall: float) -> None:
        session_id = session.session_id
        del self._sessions[session_id]
        session.model.slots.give_back(session.slot)
        self._per_model[session.model] -= 1
        if not self._per_model[session.model]:
            del self._per_model[session.model]
        self._per_principal[session.principal] -= 1
        if not self._per_principal[session.principal]:
            del self._per_principal[session.principal]
        self._remember(session_id, tombstones, wall, session.principal)

    def _remember(self, session_id: str, tombstones: dict[str, tuple[float, str]], wall: float, principal: str) -> None:
        order = self._gone_order
        if len(order) >= self.tombstone_cap:
            oldest = order.popleft()
            if self._closed.pop(oldest, None) is None:
                self._expired.pop(oldest, None)
        tombstones[session_id] = (wall, principal)
        order.append(session_id)

    def _emit(self, event: SessionEvent, session: Session | None, **fields: object) -> None:
        if self.listener is not None:
            self.listener(event, session, fields)

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
