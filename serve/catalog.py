"""Every loaded version of every served model, hot reload, and version pinning.

Each ``--model NAME=EXPORT_DIR`` is a *source*: :meth:`ModelCatalog.reload` (run every
``--reload-interval`` seconds and on SIGHUP) looks at its ``model.onnx`` and, when the content
changed, loads it as a new version of NAME. New sessions get the latest version; open sessions
stay pinned to the version they started on until they close or are migrated
(:meth:`ModelCatalog.migrate`), which is refused when the versions' state tensors, observation
size or action space differ. A version that is no longer the latest is unloaded once its last
session is gone (:meth:`ModelCatalog.retire`).

The catalog's lock guards its dictionaries against the reloader thread. Putting sessions on a
version (create, migrate, restore) and retiring versions all run on the server's event loop, so a
version cannot be unloaded while a session is being put on it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

import grpc

from rnnpolicy.serve.backend import file_version, resolve_model_file
from rnnpolicy.serve.errors import ServeError, shown
from rnnpolicy.serve.directory import Session
from rnnpolicy.serve.model import ServedModel
from rnnpolicy.spec import PolicySpec

__all__ = ["ModelCatalog", "incompatibility"]

_log = logging.getLogger("rnnpolicy.serve")

ModelLoader = Callable[[str, Path], ServedModel]
"""``(name, model file) -> ServedModel``: loads one version (``ValueError`` if unusable)."""


def incompatibility(old: PolicySpec, new: PolicySpec) -> str | None:
    """Why a session's state from ``old`` cannot continue on ``new`` (None: it can)."""
    old_state = [(s.name, s.layers, s.hidden) for s in old.state_tensors]
    new_state = [(s.name, s.layers, s.hidden) for s in new.state_tensors]
    if old_state != new_state:
        return f"state tensors differ: {old_state} vs {new_state} (name, layers, hidden)"
    if old.obs_dim != new.obs_dim:
        return f"observation sizes differ: {old.obs_dim} vs {new.obs_dim}"
    if old.action != new.action:
        return f"action spaces differ: {old.action} vs {new.action}"
    if old.kind != new.kind:
        return f"kinds differ: {old.kind!r} vs {new.kind!r}"
    return None


class ModelCatalog:
    """Served models by name and version; new sessions get each name's latest version."""

    def __init__(self, load: ModelLoader, sessions_of: Callable[[ServedModel], int],
                 on_load: Callable[[ServedModel], None] | None = None) -> None:
        self._sessions_of = sessions_of
        """Open sessions on a version (read on the event loop, by :meth:`retire`)."""
        self._load = load
        self._on_load = on_load
        """Called with each version loaded (the state directory keeps a copy of its file)."""
        self._lock = threading.Lock()
        self._latest: dict[str, ServedModel] = {}
        self._versions: dict[tuple[str, str], ServedModel] = {}
        self._sources: dict[str, Path] = {}
        self._checked: dict[str, tuple[int, int]] = {}  # name -> (mtime_ns, size) of the source last looked at

    # ------------------------------------------------------------------ loading

    def add(self, name: str, source: str | Path) -> ServedModel:
        """Load ``source`` (an export directory or ``.onnx`` file) as the latest version of ``name`` and watch it."""
        path = resolve_model_file(Path(source))
        stat = path.stat()
        model = self._load(name, path)
        with self._lock:
            self._sources[name] = Path(source)
            self._checked[name] = (stat.st_mtime_ns, stat.st_size)
            self._install(model, latest=True)
        return model

    def add_version(self, name: str, path: Path) -> ServedModel:
        """Load an older version of ``name`` (not the latest) from ``path``, e.g. to restore sessions pinned to it."""
        model = self._load(name, path)
        with self._lock:
            known = self._versions.get((name, model.version))
            if known is not None:
                model.close()
                return known
            self._install(model, latest=name not in self._latest)
        return model

    def reload(self) -> list[ServedModel]:
        """Load every source whose ``model.onnx`` changed as its name's new latest version; return those.

        A file that cannot be loaded (half-written, wrong format) is logged once and retried when it
        changes again; the versions already loaded keep serving.
        """
        loaded = []
        for name, source in list(self._sources.items()):  # on the reloader thread; retire() runs on the loop
            try:
                path = resolve_model_file(source)
                stat = path.stat()
            except (OSError, ValueError) as exc:
                _log.warning("event=reload_skipped model=%s reason=%r", name, str(exc))
                continue
            signature = (stat.st_mtime_ns, stat.st_size)
            if self._checked.get(name) == signature:
                continue
            self._checked[name] = signature
            version = file_version(path)
            with self._lock:
                current = self._latest[name]
                if current.version == version:
                    continue
                known = self._versions.get((name, version))
                if known is not None:  # back to a version still loaded
                    self._latest[name] = known
                    _log.info("event=model_latest model=%s version=%s previous=%s", name, version, current.version)
                    loaded.append(known)
                    continue
            try:
                model = self._load(name, path)
            except Exception as exc:  # noqa: BLE001 - any unloadable file: keep serving what is loaded
                _log.error("event=reload_failed model=%s path=%s reason=%r", name, path, str(exc))
                continue
            with self._lock:
                previous = self._latest[name].version
                self._install(model, latest=True)
            _log.info("event=model_loaded model=%s version=%s previous=%s path=%s", name, model.version, previous, path)
            loaded.append(model)
        return loaded

    def retire(self) -> list[ServedModel]:
        """Unload versions that are not the latest and hold no session; return them. On the event loop."""
        with self._lock:
            gone = [m for key, m in self._versions.items()
                    if self._latest.get(m.name) is not m and self._sessions_of(m) == 0]
            for model in gone:
                del self._versions[(model.name, model.version)]
        for model in gone:
            model.close()
            _log.info("event=model_unloaded model=%s version=%s", model.name, model.version)
        return gone

    def _install(self, model: ServedModel, latest: bool) -> None:
        self._versions[(model.name, model.version)] = model
        if latest:
            self._latest[model.name] = model
        if self._on_load is not None:
            self._on_load(model)

    # ------------------------------------------------------------------ lookups

    def latest(self, name: str) -> ServedModel:
        """The version new sessions of ``name`` get; "" names the only model. NOT_FOUND otherwise."""
        model = self._latest.get(name)
        if model is None:
            if not name and len(self._latest) == 1:
                return next(iter(self._latest.values()))
            if not name:
                raise ServeError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"no model named; this server runs {sorted(self._latest)}: expected one of them")
            raise ServeError(grpc.StatusCode.NOT_FOUND, f"unknown model {shown(name)}; this server runs {sorted(self._latest)}")
        return model

    def get(self, name: str, version: str) -> ServedModel | None:
        return self._versions.get((name, version))

    def is_latest(self, model: ServedModel) -> bool:
        return self._latest.get(model.name) is model

    @property
    def latest_models(self) -> dict[str, ServedModel]:
        """Each name's latest version."""
        return dict(self._latest)

    def versions(self) -> list[ServedModel]:
        """Every loaded version, by name, the latest of each name first."""
        with self._lock:
            models = list(self._versions.values())
        return sorted(models, key=lambda m: (m.name, self._latest.get(m.name) is not m, m.version))

    # ------------------------------------------------------------------ sessions on versions

    def migration_target(self, session: Session, version: str = "") -> ServedModel:
        """The version ``session`` may move to: its model's latest; ``version``, when given, must be that version.
        FAILED_PRECONDITION when it is another or its state, observations or actions differ."""
        session_id = session.session_id
        with self._lock:
            target = self._latest[session.model.name]
            if version and version != target.version:
                loaded = sorted(v for (n, v) in self._versions if n == target.name)
                raise ServeError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"session {session_id!r} can migrate only to the latest version "
                                 f"{target.version!r} of model {target.name!r}, not {shown(version)} (loaded: {loaded})")
            reason = incompatibility(session.model.spec, target.spec)
            if reason is not None:
                raise ServeError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"session {session_id!r} cannot migrate from version {session.model.version!r} to "
                                 f"{target.version!r} of model {target.name!r}: {reason}; open a new session instead")
            return target

    def close(self) -> None:
        """Stop every version's batcher (the server is shutting down)."""
        with self._lock:
            models = list(self._versions.values())
        for model in models:
            model.close()
