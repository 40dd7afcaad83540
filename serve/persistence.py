"""``--state-dir``: sessions survive restarts, as a :class:`~rnnpolicy.serve.store.SessionStore`.

Layout of a state directory::

    DIR/sessions.snapshot              every open session, written atomically
    DIR/models/NAME/VERSION.onnx       a copy of every model version sessions were pinned to
    DIR/sessions.snapshot.rejected-*   a snapshot that could not be restored, moved aside

The snapshot is one ``rnnpolicy.v1.SessionSnapshot`` protobuf message
(``protos/rnnpolicy/v1/session_record.proto``): a format name and version (2), the time it was
written, one ``SessionRecord`` per open session (state rows, last seq, cached last response,
sampling-generator state, model name and version, owner, last-use time) and the closed/expired
tombstones. Version 1 (before rnnpolicy 0.2) was an ``.npz`` archive; such a file is refused with
that reason and moved aside. The snapshot is written to ``sessions.snapshot.tmp``, fsynced, renamed
over ``sessions.snapshot`` and the directory fsynced, so a crash leaves either the old snapshot or
the new one, never a torn file.

Consistency: the server takes the snapshot on its event loop, where every step commits its state
row, cached response and seq in one callback, so each session's record belongs to one step.

Restoring is all or nothing: a snapshot that is corrupt, of another format version, or names a
model version that is neither served nor kept under ``models/`` (or whose shapes differ) is
logged with the reason, moved aside to ``sessions.snapshot.rejected-<UTC time>`` and the server
starts empty. Idle time is carried over as it was when the snapshot was written: the time the
server was down does not count towards a session's TTL.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from google.protobuf.message import DecodeError

from rnnpolicy.serve.catalog import ModelCatalog
from rnnpolicy.serve.directory import SessionDirectory
from rnnpolicy.serve.model import ServedModel
from rnnpolicy.serve.records import RecordError, SessionRecord, Tombstone, record_from_message, record_message
from rnnpolicy.serve.store import SessionStore, Snapshot
from rnnpolicy.v1 import session_record_pb2 as rpb

__all__ = ["SNAPSHOT_FILE", "SnapshotError", "StateDirStore", "restore_sessions"]

_log = logging.getLogger("rnnpolicy.serve")

SNAPSHOT_FILE = "sessions.snapshot"
FORMAT = "rnnpolicy-sessions"
FORMAT_VERSION = 2


class SnapshotError(ValueError):
    """A snapshot that cannot be restored: corrupt, another format, or incompatible with the models."""


class StateDirStore(SessionStore):
    """One server's state directory: session snapshots and the model versions they need."""

    describe = "state-dir"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            (self.root / "models").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--state-dir {str(self.root)!r} cannot be created or written: {exc}") from None
        self.snapshot = self.root / SNAPSHOT_FILE
        self._tmp = self.root / (SNAPSHOT_FILE + ".tmp")
        self._save_lock = threading.Lock()

    # ------------------------------------------------------------------ model versions

    def model_file(self, name: str, version: str) -> Path:
        return self.root / "models" / name / f"{version}.onnx"

    def keep_model(self, model: ServedModel) -> None:
        """Keep a copy of ``model``'s file, so sessions pinned to this version can be restored after it changed."""
        target = self.model_file(model.name, model.version)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".onnx.tmp")
        shutil.copyfile(model.backend.path, tmp)
        _fsync_file(tmp)
        os.replace(tmp, target)

    # ------------------------------------------------------------------ the store

    def checkpoint(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` atomically."""
        with self._save_lock:
            started = time.perf_counter()
            message = rpb.SessionSnapshot(
                format=FORMAT, format_version=FORMAT_VERSION, written_at=time.time(),
                sessions=[record_message(r) for r in snapshot.records],
                tombstones=[rpb.Tombstone(session_id=t.session_id, fate=t.fate, wall=t.wall, principal=t.principal)
                            for t in snapshot.tombstones])
            with open(self._tmp, "wb") as f:
                f.write(message.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.snapshot)
            _fsync_dir(self.root)
            _log.info("event=snapshot_written sessions=%d path=%s seconds=%.3f", len(snapshot.records), self.snapshot,
                      time.perf_counter() - started)

    def restore(self) -> Snapshot:
        """The snapshot's sessions (none without one); ``SnapshotError`` for one that cannot be read."""
        if self._tmp.exists():
            _log.warning("event=snapshot_tmp_removed path=%s reason='a write was interrupted'", self._tmp)
            self._tmp.unlink()
        if not self.snapshot.exists():
            return Snapshot()
        data = self.snapshot.read_bytes()
        if data.startswith(b"PK"):
            raise SnapshotError(f"format version 1 (an .npz archive written before rnnpolicy 0.2), expected "
                                f"{FORMAT!r} version {FORMAT_VERSION}; this version cannot restore it")
        try:
            message = rpb.SessionSnapshot.FromString(data)
        except (DecodeError, ValueError) as exc:
            raise SnapshotError(f"unreadable snapshot ({len(data)} bytes): {exc}") from None
        if message.format != FORMAT or message.format_version != FORMAT_VERSION:
            raise SnapshotError(f"format {message.format!r} version {message.format_version}, "
                                f"expected {FORMAT!r} version {FORMAT_VERSION}")
        try:
            records = [record_from_message(m) for m in message.sessions]
        except RecordError as exc:
            raise SnapshotError(str(exc)) from None
        return Snapshot(records, [Tombstone(t.session_id, t.fate, t.wall, t.principal) for t in message.tombstones])

    def reject(self, reason: str) -> Path:
        """Move the snapshot aside (it could not be restored) and log why; return where it went."""
        aside = self.root / f"{SNAPSHOT_FILE}.rejected-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        os.replace(self.snapshot, aside)
        _log.error("event=snapshot_rejected path=%s moved_to=%s reason=%r; starting with no sessions "
                   "(serve the missing model versions and move the file back to restore it)",
                   self.snapshot, aside, reason)
        return aside


def restore_sessions(store: StateDirStore, catalog: ModelCatalog, directory: SessionDirectory) -> int:
    """Reopen the snapshot's sessions (all or none; a bad snapshot is moved aside); return how many.

    Runs before the server starts (nothing else touches the directory yet). Model versions that are not
    served are loaded from the state directory's copies.
    """
    try:
        snapshot = store.restore()
        placed = [(record, _model_for(store, catalog, record)) for record in snapshot.records]
        if len(directory) + len(placed) > directory.max_sessions:
            raise SnapshotError(f"the snapshot holds {len(placed)} sessions, more than max_sessions "
                                f"{directory.max_sessions} allows beside the {len(directory)} open")
        for record, model in placed:
            record.check_shapes([(s.name, s.layers, s.hidden) for s in model.spec.state_tensors], model.layout.width)
    except (SnapshotError, RecordError) as exc:
        if store.snapshot.exists():
            store.reject(str(exc))
        catalog.retire()  # versions loaded only for this snapshot
        return 0
    for record, model in placed:
        directory.adopt(record, model)
    for tombstone in snapshot.tombstones:
        if directory.held(tombstone.session_id) is None:
            directory.remember(tombstone)
    _log.info("event=snapshot_restored sessions=%d path=%s", len(placed), store.snapshot)
    return len(placed)


def _model_for(store: StateDirStore, catalog: ModelCatalog, record: SessionRecord) -> ServedModel:
    name, version = record.model, record.version
    model = catalog.get(name, version)
    if model is None:
        if name not in catalog.latest_models:
            raise SnapshotError(f"session {record.session_id!r} is on model {name!r}, which this server "
                                f"does not serve (it serves {sorted(catalog.latest_models)})")
        kept = store.model_file(name, version)
        if not kept.is_file():
            raise SnapshotError(f"session {record.session_id!r} is on version {version!r} of model {name!r}, "
                                f"which is neither served nor kept at {kept}")
        model = catalog.add_version(name, kept)
        if model.version != version:
            raise SnapshotError(f"{kept} holds version {model.version!r}, expected {version!r}")
    return model


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
