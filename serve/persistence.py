"""``--state-dir``: sessions survive restarts.

Layout of a state directory::

    DIR/sessions.snapshot              every open session, written atomically
    DIR/models/NAME/VERSION.onnx       a copy of every model version sessions were pinned to
    DIR/sessions.snapshot.rejected-*   a snapshot that could not be restored, moved aside

A snapshot is an ``.npz`` archive: ``header`` (UTF-8 JSON: format, the time it was written, per
model version the sessions' ids, owners, seeds, sampling-generator states, last seq and idle
time, plus the closed/expired tombstones) and, per model version ``g``, ``g{i}_state{j}``
``(layers, sessions, hidden)`` and ``g{i}_last_out`` ``(sessions, width)``. It is written to
``sessions.snapshot.tmp``, fsynced, renamed over ``sessions.snapshot`` and the directory fsynced,
so a crash leaves either the old snapshot or the new one, never a torn file.

Consistency: :func:`capture` pauses every model's batcher (no step is mid-way between writing a
state and advancing its seq) and holds the registry lock while it copies, so each session's
state, seq and cached last response belong to the same step.

Restoring is all or nothing: a snapshot that is corrupt, of another format version, or names a
model version that is neither served nor kept under ``models/`` (or whose shapes differ) is
logged with the reason, moved aside to ``sessions.snapshot.rejected-<UTC time>`` and the server
starts empty. Idle time is carried over as it was when the snapshot was written: the time the
server was down does not count towards a session's TTL.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnpolicy.serve.catalog import ModelCatalog
from rnnpolicy.serve.model import ServedModel
from rnnpolicy.serve.sessions import SessionRecord, SessionRegistry

__all__ = ["SNAPSHOT_FILE", "SnapshotError", "StateDir", "capture"]

_log = logging.getLogger("rnnpolicy.serve")

SNAPSHOT_FILE = "sessions.snapshot"
FORMAT = "rnnpolicy-sessions"
FORMAT_VERSION = 1


class SnapshotError(ValueError):
    """A snapshot that cannot be restored: corrupt, another format, or incompatible with the models."""


@dataclass
class _Group:
    """The sessions of one model version in a snapshot."""

    model: ServedModel
    records: list[SessionRecord]


def capture(registry: SessionRegistry, catalog: ModelCatalog) -> tuple[list[_Group], list[tuple[str, str, float, str]]]:
    """A consistent copy of every open session, grouped by model version, and the tombstones."""
    versions = catalog.versions()
    with contextlib.ExitStack() as stack:
        for model in versions:
            stack.enter_context(model.batcher.paused())
        by_model, tombstones = registry.records()
    return [_Group(model, by_model[model]) for model in versions if by_model.get(model)], tombstones


class StateDir:
    """One server's state directory: session snapshots and the model versions they need."""

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

    # ------------------------------------------------------------------ saving

    def save(self, registry: SessionRegistry, catalog: ModelCatalog) -> int:
        """Write every open session atomically; return how many."""
        with self._save_lock:
            started = time.perf_counter()
            groups, tombstones = capture(registry, catalog)
            header = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "written_at": time.time(),
                "groups": [_group_header(g) for g in groups],
                "tombstones": tombstones,
            }
            arrays: dict[str, np.ndarray] = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
            for i, group in enumerate(groups):
                for j in range(len(group.model.slots.state)):
                    arrays[f"g{i}_state{j}"] = np.stack([r.state[j] for r in group.records], axis=1)
                arrays[f"g{i}_last_out"] = np.stack([r.last_out for r in group.records])
            with open(self._tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.snapshot)
            _fsync_dir(self.root)
            count = sum(len(g.records) for g in groups)
            _log.info("event=snapshot_written sessions=%d path=%s seconds=%.3f", count, self.snapshot,
                      time.perf_counter() - started)
            return count

    # ------------------------------------------------------------------ restoring

    def restore(self, registry: SessionRegistry, catalog: ModelCatalog) -> int:
        """Restore the snapshot's sessions (all or none); return how many. A bad snapshot is moved aside."""
        if self._tmp.exists():
            _log.warning("event=snapshot_tmp_removed path=%s reason='a write was interrupted'", self._tmp)
            self._tmp.unlink()
        if not self.snapshot.exists():
            return 0
        try:
            groups, tombstones = self._read(catalog)
        except SnapshotError as exc:
            aside = self.root / f"{SNAPSHOT_FILE}.rejected-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            os.replace(self.snapshot, aside)
            _log.error("event=snapshot_rejected path=%s moved_to=%s reason=%r; starting with no sessions "
                       "(serve the missing model versions and move the file back to restore it)",
                       self.snapshot, aside, str(exc))
            catalog.retire()  # versions loaded only for this snapshot
            return 0
        count = registry.restore(groups, tombstones)
        _log.info("event=snapshot_restored sessions=%d path=%s", count, self.snapshot)
        return count

    def _read(self, catalog: ModelCatalog) -> tuple[list[tuple[ServedModel, list[SessionRecord]]], list]:
        try:
            with np.load(self.snapshot, allow_pickle=False) as archive:
                header = json.loads(archive["header"].tobytes().decode())
                if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
                    raise SnapshotError(f"format {header.get('format')!r} version {header.get('format_version')!r}, "
                                        f"expected {FORMAT!r} version {FORMAT_VERSION}")
                groups = []
                for i, group in enumerate(header["groups"]):
                    model = self._model_for(catalog, group)
                    states = [archive[f"g{i}_state{j}"] for j in range(len(model.slots.state))]
                    last_out = archive[f"g{i}_last_out"]
                    groups.append((model, _records(group, model, states, last_out)))
                tombstones = [tuple(t) for t in header["tombstones"]]
        except SnapshotError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, EOFError,
                io.UnsupportedOperation) as exc:
            raise SnapshotError(f"unreadable snapshot: {type(exc).__name__}: {exc}") from None
        return groups, tombstones

    def _model_for(self, catalog: ModelCatalog, group: dict) -> ServedModel:
        name, version = group["model"], group["version"]
        model = catalog.get(name, version)
        if model is None:
            if name not in catalog.latest_models:
                raise SnapshotError(f"{len(group['sessions'])} sessions are on model {name!r}, which this server "
                                    f"does not serve (it serves {sorted(catalog.latest_models)})")
            kept = self.model_file(name, version)
            if not kept.is_file():
                raise SnapshotError(f"{len(group['sessions'])} sessions are on version {version!r} of model {name!r}, "
                                    f"which is neither served nor kept at {kept}")
            model = catalog.add_version(name, kept)
            if model.version != version:
                raise SnapshotError(f"{kept} holds version {model.version!r}, expected {version!r}")
        shapes = [[s.layers, s.hidden] for s in model.spec.state_tensors]
        if group["state_shapes"] != shapes or group["width"] != model.layout.width:
            raise SnapshotError(f"model {name!r} version {version!r}: the snapshot's state shapes "
                                f"{group['state_shapes']} and output width {group['width']} differ from the "
                                f"model's {shapes} and {model.layout.width}")
        return model


def _group_header(group: _Group) -> dict:
    model = group.model
    return {
        "model": model.name,
        "version": model.version,
        "state_shapes": [[s.layers, s.hidden] for s in model.spec.state_tensors],
        "width": model.layout.width,
        "sessions": [{"session_id": r.session_id, "principal": r.principal, "seed": r.seed, "rng": r.rng,
                      "last_seq": r.last_seq, "idle_seconds": r.idle_seconds} for r in group.records],
    }


def _records(group: dict, model: ServedModel, states: list[np.ndarray], last_out: np.ndarray) -> list[SessionRecord]:
    sessions = group["sessions"]
    n = len(sessions)
    for j, array in enumerate(states):  # (layers, n, hidden)
        spec = model.spec.state_tensors[j]
        if array.shape != (spec.layers, n, spec.hidden) or array.dtype != np.float32:
            raise SnapshotError(f"state tensor {j} of model {model.name!r} has shape {array.shape} {array.dtype}, "
                                f"expected {(spec.layers, n, spec.hidden)} float32")
    if last_out.shape != (n, model.layout.width):
        raise SnapshotError(f"cached outputs of model {model.name!r} have shape {last_out.shape}, "
                            f"expected {(n, model.layout.width)}")
    return [SessionRecord(session_id=s["session_id"], principal=s["principal"], seed=s["seed"], rng=s["rng"],
                          last_seq=int(s["last_seq"]), idle_seconds=float(s["idle_seconds"]),
                          state=tuple(a[:, k, :] for a in states), last_out=last_out[k])
            for k, s in enumerate(sessions)]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
