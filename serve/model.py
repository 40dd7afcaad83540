"""A served model: its onnxruntime backend, state slots, batcher, and the batched step itself."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
import numpy as np

from rnnpolicy.serve.backend import OnnxBackend
from rnnpolicy.serve.batcher import Batcher, Chunk
from rnnpolicy.serve.errors import ServeError
from rnnpolicy.serve.layout import OutputLayout
from rnnpolicy.serve.sessions import Session, SessionRegistry, SlotArrays
from rnnpolicy.spec import ACTION, LOG_STD, LOGITS, MEAN

if TYPE_CHECKING:
    from rnnpolicy.serve.metrics import ServeMetrics

__all__ = ["ServedModel"]

_log = logging.getLogger("rnnpolicy.serve")


class ServedModel:
    """One named model: runs admitted steps in batches, gathering and scattering state by slot."""

    def __init__(self, name: str, backend: OnnxBackend, registry: SessionRegistry, *, capacity: int,
                 max_batch: int = 256, max_wait_us: int = 0, split_rows: int = 0,
                 metrics: ServeMetrics | None = None) -> None:
        self.name = name
        self.backend = backend
        self.spec = backend.spec
        self.version = backend.version
        self.registry = registry
        self.layout = OutputLayout(self.spec, backend.head_names)
        self.slots = SlotArrays([(s.layers, s.hidden) for s in self.spec.state_tensors], self.layout.width, capacity)
        self.obs_dim = self.spec.obs_dim
        self.max_batch = max_batch
        self._sampled = self.spec.kind == "policy"
        self._state_names = backend.state_names
        self._n_head = len(backend.head_names)
        # A slot's state as a slice (layers, 1, hidden) is contiguous only for one layer; otherwise copy it.
        self._contiguous_slices = all(s.layers == 1 for s in self.spec.state_tensors)
        # The single-step feeds, refilled per call: batches of one model never run concurrently.
        self._feeds: dict[str, np.ndarray] = {}
        self._batch_sizes = metrics.batch_size.labels(name) if metrics is not None else None
        self._failed = f"model {name!r} version {self.version} failed to step (see the server log)"
        # A call of at least split_rows rows (0: none) runs as two halves at once, one on this helper thread.
        self.split_rows = max(2, split_rows) if split_rows else 0
        self._helper = ThreadPoolExecutor(1, thread_name_prefix=f"rnnpolicy-split-{name}") if split_rows else None
        self.batcher = Batcher(self._run, max_batch=max_batch, max_wait_us=max_wait_us, name=name)

    def close(self) -> None:
        self.batcher.close()
        if self._helper is not None:
            self._helper.shutdown()

    # ------------------------------------------------------------------ the batched step

    def _run(self, chunks: list[Chunk]) -> None:
        try:
            packed = self._step(chunks)
        except Exception:  # never leave a caller waiting: fail every row, advance nothing
            _log.exception("model %r: batched step failed", self.name)
            for chunk in chunks:
                for row in chunk.rows:
                    chunk.job.fail(int(row), grpc.StatusCode.INTERNAL, self._failed)
                self._submit_ready(self.registry.finish(chunk.sessions, None))
            return
        try:
            self._commit(chunks, packed)
        except Exception:  # noqa: BLE001 - a bug here must not end the worker thread that runs the next batches
            _log.exception("model %r: answering a batch failed", self.name)

    def _commit(self, chunks: list[Chunk], packed: np.ndarray) -> None:
        """Advance the chunks' sessions' seq (one registry call) and answer each chunk; the state was written
        just before."""
        if len(chunks) == 1:
            sessions, seqs = chunks[0].sessions, chunks[0].seqs
        else:
            sessions = [session for chunk in chunks for session in chunk.sessions]
            seqs = [seq for chunk in chunks for seq in chunk.seqs]
        ready = self.registry.finish(sessions, seqs)
        offset = 0
        for chunk in chunks:
            k = chunk.size
            chunk.job.resolve(chunk.rows, packed[offset:offset + k], copy=False)  # packed is this batch's own
            offset += k
        self._submit_ready(ready)

    def _submit_ready(self, chunks: list[Chunk]) -> None:
        """Submit the steps that queued behind finished ones (their sessions are admitted now)."""
        for chunk in chunks:
            self.batcher.submit(chunk)

    def _step(self, chunks: list[Chunk]) -> np.ndarray:
        """Run the chunks' rows, write their next states and cached rows, and return the packed rows
        ``(total, width)``; nothing (state, last output) changes until every call succeeded."""
        if len(chunks) == 1 and chunks[0].size == 1:  # slot slices instead of gathers and scatters
            c = chunks[0]
            return self._run_row(c.sessions[0], c.obs, c.episode_start, c.deterministic)
        if len(chunks) == 1:
            c = chunks[0]
            slots, obs, episode_start = c.slots, c.obs, c.episode_start
        else:
            slots = np.concatenate([c.slots for c in chunks])
            obs = np.concatenate([c.obs for c in chunks])
            episode_start = np.concatenate([c.episode_start for c in chunks])
        total = len(slots)
        state_arrays = self.slots.state
        bounds = self._call_bounds(total)
        calls = []
        for lo, hi in bounds:
            rows = slots[lo:hi]
            feeds = {"obs": obs[lo:hi], "episode_start": episode_start[lo:hi]}
            feeds.update(zip(self._state_names, (a[:, rows, :] for a in state_arrays)))  # (layers, batch, hidden)
            calls.append(feeds)
        parts, next_states = [], []
        for (lo, hi), values in zip(bounds, self._run_calls(calls)):
            if self._batch_sizes is not None:
                self._batch_sizes.observe(hi - lo)
            next_states.append((slots[lo:hi], values[self._n_head:]))
            parts.append(self.layout.pack_values(values, hi - lo))
        packed = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (total, width)
        offset = 0
        for chunk in chunks:
            k = chunk.size
            if self._sampled and not chunk.deterministic:
                self._sample(packed[offset:offset + k], chunk.sessions)
            offset += k
        for rows, nexts in next_states:
            for array, nxt in zip(state_arrays, nexts):
                array[:, rows, :] = nxt
        self.slots.last_out[slots] = packed
        return packed

    def step_now(self, session: Session, seq: int, obs: np.ndarray, episode_start: np.ndarray,
                 deterministic: bool) -> np.ndarray | None:
        """Run one admitted step on this thread if the model is idle and return its packed row ``(width,)``
        (the session's state, cached row and seq advanced); None when the model is busy (submit a Chunk then).

        The lone step's path: no job, chunk or queue. ``ServeError`` INTERNAL when the model fails; then
        nothing of the session changed.
        """
        batcher = self.batcher
        if not batcher.try_hold():
            return None
        try:
            try:
                packed = self._run_row(session, obs, episode_start, deterministic)
            except Exception:  # noqa: BLE001 - answered INTERNAL; the session is released unchanged
                _log.exception("model %r: step failed", self.name)
                self._submit_ready(self.registry.finish([session], None))
                raise ServeError(grpc.StatusCode.INTERNAL, self._failed) from None
            self._submit_ready(self.registry.finish([session], [seq]))
            return packed[0]
        finally:
            batcher.release()

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

    def _run_row(self, session: Session, obs: np.ndarray, episode_start: np.ndarray,
                 deterministic: bool) -> np.ndarray:
        """Step one session: write its next state and cached row, and return the packed row ``(1, width)``."""
        slot = session.slot
        rows = slice(slot, slot + 1)
        state_arrays = self.slots.state
        feeds = self._feeds
        feeds["obs"] = obs                        # (1, obs_dim)
        feeds["episode_start"] = episode_start    # (1,)
        for name, array in zip(self._state_names, state_arrays):
            view = array[:, rows, :]  # (layers, 1, hidden)
            feeds[name] = view if self._contiguous_slices else np.ascontiguousarray(view)
        values = self.backend.run_values(feeds)
        if self._batch_sizes is not None:
            self._batch_sizes.observe(1)
        packed = self.layout.pack_values(values, 1)  # (1, width)
        if self._sampled and not deterministic:
            self._sample(packed, [session])
        for array, nxt in zip(state_arrays, values[self._n_head:]):
            array[:, rows, :] = nxt
        self.slots.last_out[slot] = packed[0]
        return packed

    def _sample(self, rows: np.ndarray, sessions: list[Session]) -> None:
        """Replace the greedy action in ``rows`` by one drawn with each session's own generator."""
        cols = self.layout.columns
        action = cols[ACTION]
        if self.spec.action.is_discrete:
            logits = rows[:, cols[LOGITS]].astype(np.float64)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            cdf = np.cumsum(probs, axis=1)
            for i, session in enumerate(sessions):
                u = session.generator().random() * cdf[i, -1]
                rows[i, action.start] = min(int(np.searchsorted(cdf[i], u, side="right")), cdf.shape[1] - 1)
        elif self.spec.action.is_factored:
            # One draw per entry, from that entry's slice of the concatenated logits.
            logits = rows[:, cols[LOGITS]].astype(np.float64)  # (n, sum(nvec))
            bounds = np.cumsum((0,) + self.spec.action.nvec)
            for i, session in enumerate(sessions):
                u = session.generator().random(len(bounds) - 1)  # (k,)
                for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                    cdf = np.cumsum(np.exp(logits[i, lo:hi] - logits[i, lo:hi].max()))
                    rows[i, action.start + j] = min(int(np.searchsorted(cdf, u[j] * cdf[-1], side="right")), hi - lo - 1)
        else:
            mean = rows[:, cols[MEAN]]
            std = np.exp(rows[:, cols[LOG_STD]])
            low = np.asarray(self.spec.action.low, dtype=np.float32)
            high = np.asarray(self.spec.action.high, dtype=np.float32)
            for i, session in enumerate(sessions):
                noise = session.generator().standard_normal(mean.shape[1]).astype(np.float32)
                rows[i, action] = np.clip(mean[i] + std[i] * noise, low, high)
