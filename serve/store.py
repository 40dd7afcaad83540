"""Where sessions live beyond this process: the :class:`SessionStore` interface and the in-memory store.

A server steps its sessions in its own memory (the slot arrays); a store is what that memory is
backed by. Few verbs, each on whole records, with an ownership ``epoch`` on every write (as in
Orleans' grain storage: a write against a stale epoch fails, so two owners can never both win):

- :meth:`SessionStore.insert` a new session's record;
- :meth:`SessionStore.claim` the record of a session this process does not hold (raising its epoch:
  the previous holder's later commits are refused);
- :meth:`SessionStore.commit` records after their steps, each by compare-and-set on (seq, epoch);
- :meth:`SessionStore.delete` a closed or expired session;
- :meth:`SessionStore.restore` / :meth:`SessionStore.checkpoint` every session at start / now.

Every coroutine may raise :class:`StoreUnavailable` when the store cannot be reached.

``write_through``: when True, the server answers a step only after :meth:`commit` returned, so a
process may die at any moment without losing an answered step (the Redis store). When False the
process's memory is the live copy and the store only persists it now and then (the in-memory
store, and the ``--state-dir`` snapshots in :mod:`rnnpolicy.serve.persistence`); the server then
never calls ``insert``, ``claim``, ``commit`` or ``delete`` on the step path.

Implementations: :class:`MemoryStore` (the default: nothing outside the process),
:class:`rnnpolicy.serve.persistence.StateDirStore` (``--state-dir``) and the Redis store (``--session-store redis://``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from rnnpolicy.serve.records import SessionRecord, Tombstone

__all__ = ["Commit", "MemoryStore", "SessionStore", "Snapshot", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store cannot be reached now (the step is answered UNAVAILABLE; nothing was half-written)."""


@dataclass(frozen=True)
class Commit:
    """One record to write after a step: applied only if the stored copy is at ``base_seq`` and ``record.epoch``."""

    record: SessionRecord
    base_seq: int
    """The seq the stored copy must have: ``record.last_seq - 1`` after a step, ``record.last_seq`` after a state
    write (reset, SetSessionState, migration)."""


@dataclass
class Snapshot:
    """Every open session and the remembered closed/expired ids, at one moment."""

    records: list[SessionRecord] = field(default_factory=list)
    tombstones: list[Tombstone] = field(default_factory=list)


class SessionStore:
    """The interface a session store implements; this base class is the in-memory store (all no-ops)."""

    write_through: ClassVar[bool] = False
    """True: every step is committed before it is answered (see the module docstring)."""
    describe: ClassVar[str] = "memory"

    async def insert(self, record: SessionRecord) -> None:
        """Store a new session (its epoch is the one ``record`` has)."""

    async def claim(self, session_id: str) -> SessionRecord | None:
        """The stored record of ``session_id`` with its epoch raised, so this process now owns it; None when the
        store holds no such session. ``RecordError`` for a record that cannot be read."""
        return None

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        """Write ``commits`` (one round trip for all): each True when applied, False when fenced (the stored
        copy has another epoch or seq: another process took the session over, or it was closed)."""
        return [True] * len(commits)

    async def delete(self, session_id: str, epoch: int, tombstone: Tombstone) -> None:
        """Remove a closed or expired session (only at ``epoch``) and remember its tombstone."""

    async def tombstone(self, session_id: str) -> Tombstone | None:
        """What became of ``session_id`` if it was closed or expired (None: unknown to the store)."""
        return None

    def restore(self) -> Snapshot:
        """Sessions to reopen when the server starts."""
        return Snapshot()

    def checkpoint(self, snapshot: Snapshot) -> None:
        """Persist every open session now (on shutdown and every ``--checkpoint-interval``)."""

    async def healthy(self) -> bool:
        """Whether the store can be reached now (the server reports NOT_SERVING while it cannot)."""
        return True

    async def close(self) -> None:
        """Release connections."""


class MemoryStore(SessionStore):
    """The default: sessions live only in this process's memory."""
