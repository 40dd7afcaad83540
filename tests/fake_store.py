"""A write-through session store in one process's memory, with the SessionStore contract's compare-and-set:
what the Redis store does, without Redis, so the coordinator's cluster semantics are tested everywhere."""

from __future__ import annotations

from typing import Sequence

from rnnpolicy.serve.records import SessionRecord, Tombstone, decode_record, encode_record
from rnnpolicy.serve.store import Commit, SessionStore, StoreUnavailable


class SharedDictStore(SessionStore):
    """Records as bytes in a dict shared by the servers given it; ``down`` makes every call StoreUnavailable."""

    write_through = True
    describe = "test-dict"

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.gone: dict[str, Tombstone] = {}
        self.commits: dict[tuple[str, int], int] = {}
        """How many times each (session, seq) was committed by a step (exactly once expected)."""
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("test store is down")

    async def insert(self, record: SessionRecord) -> None:
        self._check()
        self.records[record.session_id] = encode_record(record)

    async def claim(self, session_id: str) -> SessionRecord | None:
        self._check()
        data = self.records.get(session_id)
        if data is None:
            return None
        record = decode_record(data)
        record.epoch += 1
        self.records[session_id] = encode_record(record)
        return record

    async def commit(self, commits: Sequence[Commit]) -> list[bool]:
        self._check()
        applied = []
        for commit in commits:
            data = self.records.get(commit.record.session_id)
            stored = decode_record(data) if data is not None else None
            ok = stored is not None and stored.epoch == commit.record.epoch and stored.last_seq == commit.base_seq
            if ok:
                self.records[commit.record.session_id] = encode_record(commit.record)
                if commit.record.last_seq != commit.base_seq:
                    key = (commit.record.session_id, commit.record.last_seq)
                    self.commits[key] = self.commits.get(key, 0) + 1
            applied.append(ok)
        return applied

    async def delete(self, session_id: str, epoch: int, tombstone: Tombstone) -> None:
        self._check()
        data = self.records.get(session_id)
        if data is not None and decode_record(data).epoch == epoch:
            del self.records[session_id]
            self.gone[session_id] = tombstone

    async def tombstone(self, session_id: str) -> Tombstone | None:
        self._check()
        return self.gone.get(session_id)

    async def healthy(self) -> bool:
        return not self.down
