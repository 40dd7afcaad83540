"""Cross-session batching: steps that arrive together run as one onnxruntime call.

A :class:`Chunk` is some rows of one :class:`Job` (a Step, one stream message, or a StepBatch)
whose sessions are ready to step. :meth:`Batcher.submit` queues chunks for the model's one
worker thread, which takes everything queued (up to ``max_batch`` rows, waiting up to
``max_wait_us`` for a batch to fill) and hands it to the model's runner. With ``max_wait_us``
0 (the default) a step that finds the model idle and nothing queued runs at once on the
calling thread, skipping two thread hand-offs; steps arriving meanwhile queue for the worker
and run together in its next batch. Batches of one model never run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import Callable, Iterator

import numpy as np

__all__ = ["Batcher", "Chunk", "Job"]


class Job:
    """The answer to one request: a packed output row per step, or an error per failed row.

    Made on the event loop by the RPC's coroutine, which awaits :meth:`wait`; rows resolve on the
    loop (a batch run there) or on the model's worker thread. ``width`` 0 (single-row jobs only)
    allocates nothing up front: ``out`` stays None until the row resolves and is then its packed
    row ``(1, width)``, copied unless it is a batch's own output.
    """

    __slots__ = ("out", "errors", "_remaining", "_lock", "_future", "_loop_thread")

    def __init__(self, rows: int, width: int) -> None:
        self.out = np.zeros((rows, width), dtype=np.float32) if width else None
        self.errors: dict[int, tuple[object, str, int]] | None = None  # row -> (code, message, expected seq)
        self._remaining = rows
        # A single row resolves once; rows of a StepBatch may resolve on two threads at once.
        self._lock = threading.Lock() if rows > 1 else None
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop_thread = threading.get_ident()

    def resolve(self, rows: np.ndarray | list[int], values: np.ndarray, copy: bool = True) -> None:
        """Rows ``rows`` of this job finished with packed outputs ``values`` (with ``copy`` False, a view
        that no one writes again, such as a batch's fresh output rows)."""
        if self.out is None:
            # A view of the row cache must be copied: the session's next step overwrites it.
            self.out = np.array(values, dtype=np.float32) if copy else np.asarray(values, dtype=np.float32)
        else:
            self.out[rows] = values
        self._done(len(rows))

    def fail(self, row: int, code: object, message: str, expected_seq: int = 0) -> None:
        """Row ``row`` was refused with status ``code``; its state is untouched."""
        if self._lock is None:
            self.errors = {row: (code, message, expected_seq)}
        else:
            with self._lock:
                if self.errors is None:
                    self.errors = {}
                self.errors[row] = (code, message, expected_seq)
        self._done(1)

    def _done(self, count: int) -> None:
        if self._lock is None:
            self._remaining = 0
        else:
            with self._lock:
                self._remaining -= count
                if self._remaining:
                    return
        if threading.get_ident() == self._loop_thread:  # resolved by a batch run on the loop
            _set_done(self._future)
        else:  # by the batcher's worker thread
            self._future.get_loop().call_soon_threadsafe(_set_done, self._future)

    def wait(self) -> asyncio.Future[None]:
        """The future to await (on the event loop that made the job): done when every row finished."""
        return self._future


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled call's future stays cancelled
        future.set_result(None)


class Chunk:
    """Rows of one job whose sessions are admitted and ready to step."""

    __slots__ = ("job", "rows", "sessions", "slots", "seqs", "obs", "episode_start", "deterministic", "size")

    def __init__(self, job: Job, rows: np.ndarray, sessions: list, slots: np.ndarray, seqs: list[int],
                 obs: np.ndarray, episode_start: np.ndarray, deterministic: bool) -> None:
        self.job = job
        self.rows = rows                    # indices into job.out
        self.sessions = sessions            # the Session of each row
        self.slots = slots                  # (k,) state slot of each row
        self.seqs = seqs
        self.obs = obs                      # (k, obs_dim) float32
        self.episode_start = episode_start  # (k,) float32, 1.0 zeroes the row's state first
        self.deterministic = deterministic
        self.size = len(seqs)               # rows in this chunk


class Batcher:
    """One model's queue of ready chunks and the worker thread that runs them in batches."""

    def __init__(self, runner: Callable[[list[Chunk]], None], *, max_batch: int = 256,
                 max_wait_us: int = 0, name: str = "model") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_us < 0:
            raise ValueError(f"max_wait_us must be >= 0, got {max_wait_us}")
        self._runner = runner
        self.max_batch = max_batch
        self.max_wait = max_wait_us / 1e6
        self._queue: deque[Chunk] = deque()
        self._queued_rows = 0
        self._busy = False
        self._closed = False
        self._cond = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._work, name=f"rnnpolicy-batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, chunk: Chunk) -> None:
        """Queue ``chunk`` (or, when the model is idle and nothing waits, run it now on this thread)."""
        self.submit_many([chunk])

    def submit_many(self, chunks: list[Chunk]) -> None:
        """Queue ``chunks`` (or, when the model is idle and nothing waits, run them now as one batch on this thread)."""
        if self.try_hold():
            try:
                self._runner(chunks)
            finally:
                self.release()
            return
        with self._cond:
            self._queue.extend(chunks)
            self._queued_rows += sum(c.size for c in chunks)
            self._cond.notify()

    def try_hold(self) -> bool:
        """Take the model for a run on this thread if it is idle, nothing is queued and batches do not wait
        to fill (``max_wait_us`` 0); the caller runs, then calls :meth:`release`. False: submit instead."""
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

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the model still: wait for the running batch, run none until the block ends (steps queue meanwhile)."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take(self) -> list[Chunk] | None:
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
            while self._busy:  # an inline run started while we waited
                self._cond.wait()
            taken: list[Chunk] = []
            rows = 0
            while self._queue and rows < self.max_batch:
                chunk = self._queue.popleft()
                taken.append(chunk)
                rows += chunk.size
            self._queued_rows -= rows
            self._busy = True
            return taken

    def _work(self) -> None:
        while True:
            chunks = self._take()
            if chunks is None:
                return
            try:
                self._runner(chunks)
            finally:
                chunks = None  # do not hold the batch (and its sessions) until the next one arrives
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
