"""A served model version: its onnxruntime backend, output layout, state arrays and worker thread.

:meth:`ServedModel.run` is the graph call and nothing else: given the batch's inputs it returns the
packed output rows and the next state; it knows nothing of sessions. Calls larger than
``max_batch`` rows are cut, and a call of at least ``split_rows`` rows runs as two halves at once,
the second on a helper thread (onnxruntime releases the GIL while it runs). The state arrays
(:attr:`ServedModel.slots`) hold the state of the sessions pinned to this version; the step
coordinator reads and writes them through their slot API.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from rnnpolicy.serve.backend import OnnxBackend
from rnnpolicy.serve.batcher import Batch, Batcher
from rnnpolicy.serve.layout import OutputLayout
from rnnpolicy.serve.slots import SlotArrays

__all__ = ["ServedModel"]


class ServedModel:
    """One version of one named model."""

    def __init__(self, name: str, backend: OnnxBackend, *, capacity: int, deliver: Callable[[list[Batch]], None],
                 max_batch: int = 256, max_wait_us: int = 0, split_rows: int = 0,
                 observe_batch: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.backend = backend
        self.spec = backend.spec
        self.version = backend.version
        self.layout = OutputLayout(self.spec, backend.head_names)
        self.slots = SlotArrays([(s.layers, s.hidden) for s in self.spec.state_tensors], self.layout.width, capacity)
        """The state rows of the sessions on this version (read and written by the step coordinator)."""
        self.obs_dim = self.spec.obs_dim
        self.max_batch = max_batch
        self.sampled = self.spec.kind == "policy"
        """Whether non-deterministic steps sample their action (policies; Q-networks are always greedy)."""
        self._state_names = backend.state_names
        self._n_head = len(backend.head_names)
        self._feeds: dict[str, np.ndarray] = {}  # the one-row call's feeds, refilled per call
        self._observe_batch = observe_batch
        self.failed_message = f"model {name!r} version {self.version} failed to step (see the server log)"
        # A call of at least split_rows rows (0: none) runs as two halves at once, one on this helper thread.
        self.split_rows = max(2, split_rows) if split_rows else 0
        self._helper = ThreadPoolExecutor(1, thread_name_prefix=f"rnnpolicy-split-{name}") if split_rows else None
        self.batcher = Batcher(self.run, deliver, max_batch=max_batch, max_wait_us=max_wait_us, name=name)

    def close(self) -> None:
        self.batcher.close()
        if self._helper is not None:
            self._helper.shutdown()

    def run(self, obs: np.ndarray, episode_start: np.ndarray,
            state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One step of ``k`` rows: ``obs`` ``(k, obs_dim)``, ``episode_start`` ``(k,)``, each state tensor
        ``(layers, k, hidden)``; returns the packed head outputs ``(k, width)`` and the next state."""
        total = len(obs)
        if total == 1:
            feeds = self._feeds
            feeds["obs"] = obs
            feeds["episode_start"] = episode_start
            for name, array in zip(self._state_names, state):
                feeds[name] = array
            values = self.backend.run_values(feeds)
            if self._observe_batch is not None:
                self._observe_batch(1)
            return self.layout.pack_values(values, 1), tuple(values[self._n_head:])
        bounds = self._call_bounds(total)
        calls = []
        for lo, hi in bounds:
            feeds = {"obs": obs[lo:hi], "episode_start": episode_start[lo:hi]}
            feeds.update(zip(self._state_names, (np.ascontiguousarray(a[:, lo:hi]) for a in state)))  # (layers, rows, hidden)
            calls.append(feeds)
        parts, nexts = [], []
        for (lo, hi), values in zip(bounds, self._run_calls(calls)):
            if self._observe_batch is not None:
                self._observe_batch(hi - lo)
            parts.append(self.layout.pack_values(values, hi - lo))
            nexts.append(values[self._n_head:])
        if len(parts) == 1:
            return parts[0], tuple(nexts[0])
        return np.concatenate(parts), tuple(np.concatenate(p, axis=1) for p in zip(*nexts))

    def _call_bounds(self, total: int) -> list[tuple[int, int]]:
        """Row ranges of the onnxruntime calls for ``total`` rows: at most ``max_batch`` each, and a range of
        at least ``split_rows`` rows cut in two (the halves run at once, see :meth:`_run_calls`)."""
        bounds = []
        for lo in range(0, total, self.max_batch):
            hi = min(total, lo + self.max_batch)
            if self.split_rows and hi - lo >= self.split_rows:
                mid = (lo + hi) // 2
                bounds += [(lo, mid), (mid, hi)]
            else:
                bounds.append((lo, hi))
        return bounds

    def _run_calls(self, calls: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """Each call's outputs; with the helper thread, the later half of the calls runs there meanwhile
        (onnxruntime releases the GIL while it runs, and a session takes concurrent calls)."""
        if self._helper is None or len(calls) == 1:
            return [self.backend.run_values(feeds) for feeds in calls]
        half = len(calls) // 2
        later = self._helper.submit(lambda: [self.backend.run_values(feeds) for feeds in calls[half:]])
        try:
            first = [self.backend.run_values(feeds) for feeds in calls[:half]]
        finally:
            outputs = later.result()  # wait for it even if the first half failed: no call outlives the batch
        return first + outputs
