"""One model version's worker thread: it runs the batches that arrive while the model is busy.

A :class:`Batch` is some admitted steps' inputs, gathered on the event loop: ``obs`` ``(k, obs_dim)``,
``episode_start`` ``(k,)`` and the state inputs, each ``(layers, k, hidden)``. When the model is idle
the coordinator runs a batch itself (:meth:`Batcher.try_hold`, then :meth:`Batcher.release`); when
it is busy the batch is :meth:`Batcher.submit`-ted and the worker takes everything queued (up to
``max_batch`` rows, waiting up to ``max_wait_us`` for more), runs it as one call, splits the results
back into the batches and hands them to ``deliver`` (which passes them to the event loop). Batches
of one model never run concurrently. The batcher knows nothing of sessions.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Sequence

import numpy as np

__all__ = ["Batch", "Batcher", "Runner", "run_batches"]

Runner = Callable[[np.ndarray, np.ndarray, tuple], tuple[np.ndarray, tuple]]
"""``(obs (k, obs_dim), episode_start (k,), state) -> (packed (k, width), next_state)``, each state tensor
``(layers, k, hidden)``."""


class Batch:
    """Inputs of some steps, and after the run their results (or the exception that failed them)."""

    __slots__ = ("steps", "obs", "episode_start", "state", "size", "packed", "next_state", "error")

    def __init__(self, steps: Sequence[object], obs: np.ndarray, episode_start: np.ndarray,
                 state: tuple[np.ndarray, ...]) -> None:
        self.steps = steps                  # the coordinator's step of each row
        self.obs = obs                      # (k, obs_dim) float32
        self.episode_start = episode_start  # (k,) float32, 1.0 zeroes the row's state first
        self.state = state                  # each (layers, k, hidden)
        self.size = len(obs)
        self.packed: np.ndarray | None = None       # (k, width) after the run
        self.next_state: tuple[np.ndarray, ...] = ()  # each (layers, k, hidden) after the run
        self.error: BaseException | None = None


def run_batches(runner: Runner, batches: list[Batch]) -> None:
    """Run ``batches`` as one call and set each one's results (or, if the call failed, its error)."""
    try:
        if len(batches) == 1:
            b = batches[0]
            b.packed, b.next_state = runner(b.obs, b.episode_start, b.state)
            return
        obs = np.concatenate([b.obs for b in batches])
        episode_start = np.concatenate([b.episode_start for b in batches])
        state = tuple(np.concatenate(parts, axis=1) for parts in zip(*(b.state for b in batches)))
        packed, next_state = runner(obs, episode_start, state)
    except Exception as exc:  # noqa: BLE001 - every row of the call fails; the caller answers them
        for b in batches:
            b.error = exc
        return
    offset = 0
    for b in batches:
        k = b.size
        b.packed = packed[offset:offset + k]
        b.next_state = tuple(n[:, offset:offset + k] for n in next_state)
        offset += k


class Batcher:
    """One model version's queue of batches and the worker thread that runs them while the model is busy."""

    def __init__(self, runner: Runner, deliver: Callable[[list[Batch]], None], *, max_batch: int = 256,
                 max_wait_us: int = 0, name: str = "model") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_us < 0:
            raise ValueError(f"max_wait_us must be >= 0, got {max_wait_us}")
        self._runner = runner
        self._deliver = deliver
        self.max_batch = max_batch
        self.max_wait = max_wait_us / 1e6
        self._queue: deque[Batch] = deque()
        self._queued_rows = 0
        self._busy = False
        self._closed = False
        self._cond = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._work, name=f"rnnpolicy-batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def try_hold(self) -> bool:
        """Take the model for a run on the calling thread if it is idle, nothing is queued and batches do not
        wait to fill (``max_wait_us`` 0); the caller runs, then calls :meth:`release`. False: submit instead."""
        with self._cond:
            if self._busy or self._queue or self.max_wait:
                return False
            self._busy = True
            return True

    def release(self) -> None:
        """End a run begun with :meth:`try_hold`; the worker takes what queued meanwhile."""
        with self._cond:
            self._busy = False
            if self._queue:
                self._cond.notify()

    def submit(self, batch: Batch) -> None:
        """Queue ``batch`` for the worker; its results go to ``deliver``."""
        with self._cond:
            self._queue.append(batch)
            self._queued_rows += batch.size
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[Batch] | None:
        with self._cond:
            while not self._closed and (self._busy or not self._queue):
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            if self.max_wait and self._queued_rows < self.max_batch:
                deadline = time.monotonic() + self.max_wait
                while self._queued_rows < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            while self._busy:  # a run on the loop started while we waited
                self._cond.wait()
            taken: list[Batch] = []
            rows = 0
            while self._queue and (not taken or rows + self._queue[0].size <= self.max_batch):
                batch = self._queue.popleft()
                taken.append(batch)
                rows += batch.size
            self._queued_rows -= rows
            self._busy = True
            return taken

    def _work(self) -> None:
        while True:
            batches = self._take()
            if batches is None:
                return
            try:
                run_batches(self._runner, batches)
                self._deliver(batches)
            finally:
                batches = None  # do not hold the batch (and its steps) until the next one arrives
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
