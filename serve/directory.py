"""The session directory: ids, ownership, limits, idle expiry, tombstones and lifecycle events.

It knows which sessions this process holds and who owns each, and answers every lookup with the
right words: NOT_FOUND saying a session expired or was closed (and when), PERMISSION_DENIED for
another principal's session worded as for an id that never existed (with ``private_ids``, when
authentication is on, unknown ids answer PERMISSION_DENIED too), so ids cannot be probed.

Tombstones: the ids of the latest closed or expired sessions are remembered (about 200 bytes an id),
up to :func:`tombstone_cap` ``(max_sessions)`` = 4 x max_sessions, at least 4,096 and at most 100,000;
the oldest are forgotten first and then answer "unknown session".

A session's state rows live in its model version's :class:`~rnnpolicy.serve.slots.SlotArrays`; the
directory takes and gives back the slot and converts sessions to and from
:class:`~rnnpolicy.serve.records.SessionRecord`. Step sequencing (seq, busy, queued steps) is
:mod:`rnnpolicy.serve.sequencing`. Everything here runs on the server's event loop: no locks.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Callable, Literal

import grpc
import numpy as np

from rnnpolicy.serve.errors import ServeError, shown
from rnnpolicy.serve.records import SessionRecord, Tombstone

if TYPE_CHECKING:
    from rnnpolicy.serve.model import ServedModel

__all__ = ["Session", "SessionDirectory", "SessionEvent", "tombstone_cap"]

SessionEvent = Literal["created", "closed", "expired", "refused", "migrated", "restored", "claimed"]
EventListener = Callable[[SessionEvent, dict], None]
"""Called ``(event, fields)`` on each lifecycle event (logs and metrics); fields name the session and model."""

_TOMBSTONES_MIN = 4096
_TOMBSTONES_MAX = 100_000
_TOMBSTONES_PER_SESSION = 4


def tombstone_cap(max_sessions: int) -> int:
    """How many closed or expired session ids a directory of ``max_sessions`` remembers (oldest forgotten first)."""
    return min(_TOMBSTONES_MAX, max(_TOMBSTONES_MIN, _TOMBSTONES_PER_SESSION * max_sessions))


class Session:
    """One session this process holds: ids, its model version and slot, and its sequencing fields."""

    __slots__ = ("session_id", "principal", "model", "slot", "last_seq", "busy", "pending", "idle_waiters",
                 "last_used", "seed", "rng", "epoch", "affinity")

    def __init__(self, session_id: str, model: ServedModel, slot: int, seed: int | None, now: float,
                 principal: str = "", epoch: int = 0, affinity: str = "") -> None:
        self.session_id = session_id
        self.principal = principal
        self.model = model
        self.slot = slot
        self.last_seq = 0
        self.busy = False
        """A step is in flight (see rnnpolicy.serve.sequencing)."""
        self.pending: deque | None = None
        """Steps queued behind the one in flight."""
        self.idle_waiters: list | None = None
        """Futures of calls waiting for the session to be idle."""
        self.last_used = now
        self.seed = seed
        self.rng: np.random.Generator | None = None
        self.epoch = epoch
        """Ownership epoch in the session store (0: the store keeps no copy)."""
        self.affinity = affinity

    def generator(self) -> np.random.Generator:
        """This session's action-sampling generator (seeded by CreateSession's seed), made on first use."""
        if self.rng is None:
            self.rng = np.random.default_rng(self.seed)
        return self.rng

    def fields(self) -> dict:
        """The session as event fields."""
        return {"session_id": self.session_id, "model": self.model.name, "version": self.model.version,
                "principal": self.principal, "seq": self.last_seq}


class SessionDirectory:
    """The sessions this process holds: lookup by id, ownership, limits, TTL expiry and tombstones."""

    def __init__(self, max_sessions: int = 10_000, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, *, max_sessions_per_principal: int = 0,
                 private_ids: bool = False, listener: EventListener | None = None) -> None:
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
        self.ttl = float(ttl)
        self.clock = clock
        """Monotonic seconds, for idle time (injectable in tests)."""
        self.wall = wall
        """Wall-clock seconds, for the times in messages and records."""
        self._sessions: dict[str, Session] = {}
        self.held: Callable[[str], Session | None] = self._sessions.get
        """The session if this process holds it, else None (no checks: the step path's dict read, a C call per row)."""
        self._per_model: Counter = Counter()      # ServedModel -> open sessions
        self._per_principal: Counter = Counter()  # principal -> open sessions
        self._gone: dict[str, Tombstone] = {}     # closed or expired ids, oldest first (dicts keep order)
        self.tombstone_cap = tombstone_cap(max_sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def tombstones(self) -> int:
        """How many closed or expired session ids are remembered (at most ``tombstone_cap``)."""
        return len(self._gone)

    def sessions_of(self, model: ServedModel) -> int:
        """Open sessions pinned to ``model`` (one version of a model)."""
        return self._per_model[model]

    # ------------------------------------------------------------------ lifecycle

    def create(self, model: ServedModel, seed: int | None = None, principal: str = "", affinity: str = "") -> Session:
        """Open a session on ``model``; RESOURCE_EXHAUSTED (with a retry hint) beyond the limits."""
        now = self.clock()
        if len(self._sessions) >= self.max_sessions:
            self.expire_idle()
        if len(self._sessions) >= self.max_sessions:
            self._emit("refused", {"model": model.name, "principal": principal, "reason": "max_sessions"})
            raise self._full(now)
        cap = self.max_sessions_per_principal
        if cap and self._per_principal[principal] >= cap:
            self._emit("refused", {"model": model.name, "principal": principal, "reason": "max_sessions_per_principal"})
            raise ServeError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"principal {shown(principal)} holds its maximum of {cap} sessions; close some before opening more",
                (("retry-after-ms", "1000"),),
            )
        session = Session(secrets.token_urlsafe(18), model, model.slots.take(), seed, now, principal,
                          affinity=affinity)
        self._add(session)
        self._emit("created", session.fields())
        return session

    def lookup(self, session_id: str, principal: str = "") -> Session:
        """The live session ``session_id`` of ``principal``: NOT_FOUND (saying expired or closed, and when) or
        PERMISSION_DENIED (another principal's, or with ``private_ids`` unknown) otherwise. Expires it if idle too long."""
        session = self._sessions.get(session_id)
        if session is None:
            raise self.unknown(session_id, principal, self._gone.get(session_id))
        if session.principal != principal:
            raise self.not_yours(session_id, principal)
        if self.ttl and not session.busy and self.clock() - session.last_used > self.ttl:
            tombstone = self.expire(session)
            raise ServeError(grpc.StatusCode.NOT_FOUND, f"session {shown(session_id)} {self._fate(tombstone)}")
        return session

    def unknown(self, session_id: str, principal: str, tombstone: Tombstone | None) -> ServeError:
        """The error for an id this process does not hold, worded from its ``tombstone`` when the caller owned it."""
        if tombstone is not None and tombstone.principal == principal:
            return ServeError(grpc.StatusCode.NOT_FOUND, f"session {shown(session_id)} {self._fate(tombstone)}")
        if self.private_ids or tombstone is not None:
            return self.not_yours(session_id, principal)
        return ServeError(grpc.StatusCode.NOT_FOUND,
                          f"unknown session {shown(session_id)}: expected an id returned by CreateSession")

    def tombstone_of(self, session_id: str) -> Tombstone | None:
        return self._gone.get(session_id)

    @staticmethod
    def not_yours(session_id: str, principal: str) -> ServeError:
        """The same answer for another principal's session and an id that does not exist: nothing to probe."""
        return ServeError(grpc.StatusCode.PERMISSION_DENIED,
                          f"session {shown(session_id)} is not an open session of principal {shown(principal)}; "
                          f"expected an id that this principal's CreateSession returned")

    def close(self, session: Session) -> Tombstone:
        """Remove a session that was closed; return its tombstone."""
        tombstone = Tombstone(session.session_id, "closed", self.wall(), session.principal)
        self._remove(session, tombstone)
        self._emit("closed", session.fields())
        return tombstone

    def expire(self, session: Session) -> Tombstone:
        """Remove a session idle past the TTL; return its tombstone."""
        idle = self.clock() - session.last_used
        tombstone = Tombstone(session.session_id, "expired", self.wall() - (idle - self.ttl), session.principal)
        self._remove(session, tombstone)
        self._emit("expired", {**session.fields(), "idle_seconds": round(idle, 3)})
        return tombstone

    def drop(self, session: Session) -> None:
        """Forget a session another process took over (no tombstone, no event: it lives on elsewhere)."""
        self._remove(session, None)

    def idle_expired(self) -> list[Session]:
        """Sessions idle past the TTL with no step in flight (the caller expires them)."""
        if not self.ttl:
            return []
        now = self.clock()
        return [s for s in self._sessions.values() if not s.busy and now - s.last_used > self.ttl]

    def expire_idle(self) -> list[Tombstone]:
        """Expire every session idle past the TTL; return their tombstones."""
        return [self.expire(session) for session in self.idle_expired()]

    def move(self, session: Session, target: ServedModel) -> None:
        """Put ``session`` on ``target`` (another version of its model, compatibility checked by the caller): its
        state rows and cached last response travel with it."""
        source = session.model
        slot = target.slots.take()
        target.slots.write(slot, source.slots.read(session.slot))
        target.slots.set_cached(slot, source.slots.cached(session.slot))
        source.slots.give_back(session.slot)
        self._per_model[source] -= 1
        if not self._per_model[source]:
            del self._per_model[source]
        self._per_model[target] += 1
        session.model, session.slot = target, slot
        session.last_used = self.clock()
        self._emit("migrated", {**session.fields(), "from_version": source.version})

    # ----------------------------------------------------------------- records

    def record(self, session: Session) -> SessionRecord:
        """The session as a record (copies of its state rows and cached row)."""
        slots = session.model.slots
        return SessionRecord(
            session_id=session.session_id, model=session.model.name, version=session.model.version,
            principal=session.principal, seed=session.seed,
            rng=session.rng.bit_generator.state if session.rng is not None else None,
            last_seq=session.last_seq, last_used=self.wall() - max(0.0, self.clock() - session.last_used),
            epoch=session.epoch, state=slots.read(session.slot),
            state_names=tuple(s.name for s in session.model.spec.state_tensors),
            last_out=slots.cached(session.slot), affinity=session.affinity)

    def adopt(self, record: SessionRecord, model: ServedModel, event: SessionEvent = "restored") -> Session:
        """Hold a stored session (restored from a snapshot, or claimed from the store) on ``model``, its version.

        ``RecordError`` when the record's shapes do not fit ``model``; RESOURCE_EXHAUSTED when this process is full.
        """
        record.check_shapes([(s.name, s.layers, s.hidden) for s in model.spec.state_tensors], model.layout.width)
        if len(self._sessions) >= self.max_sessions:
            self.expire_idle()
        if len(self._sessions) >= self.max_sessions:
            raise self._full(self.clock())
        idle = max(0.0, self.wall() - record.last_used)
        session = Session(record.session_id, model, model.slots.take(), record.seed, self.clock() - idle,
                          record.principal, record.epoch, record.affinity)
        session.last_seq = record.last_seq
        if record.rng is not None:
            session.rng = np.random.default_rng()
            session.rng.bit_generator.state = record.rng
        model.slots.write(session.slot, record.state)
        model.slots.set_cached(session.slot, record.last_out)
        self._gone.pop(record.session_id, None)
        self._add(session)
        self._emit(event, session.fields())
        return session

    def remember(self, tombstone: Tombstone) -> None:
        """Keep a closed or expired id's tombstone (the oldest is forgotten beyond the cap)."""
        gone = self._gone
        gone.pop(tombstone.session_id, None)
        if len(gone) >= self.tombstone_cap:
            del gone[next(iter(gone))]
        gone[tombstone.session_id] = tombstone

    def all_tombstones(self) -> list[Tombstone]:
        return list(self._gone.values())

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    # ----------------------------------------------------------------- internals

    def _add(self, session: Session) -> None:
        self._sessions[session.session_id] = session
        self._per_model[session.model] += 1
        self._per_principal[session.principal] += 1

    def _remove(self, session: Session, tombstone: Tombstone | None) -> None:
        del self._sessions[session.session_id]
        session.model.slots.give_back(session.slot)
        self._per_model[session.model] -= 1
        if not self._per_model[session.model]:
            del self._per_model[session.model]
        self._per_principal[session.principal] -= 1
        if not self._per_principal[session.principal]:
            del self._per_principal[session.principal]
        if tombstone is not None:
            self.remember(tombstone)

    def _fate(self, tombstone: Tombstone) -> str:
        if tombstone.fate == "closed":
            return f"was closed at {_stamp(tombstone.wall)}"
        return f"expired at {_stamp(tombstone.wall)} after {self.ttl:g} s idle (session TTL); create a new session"

    def _emit(self, event: SessionEvent, fields: dict) -> None:
        if self.listener is not None:
            self.listener(event, fields)

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


def _stamp(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
