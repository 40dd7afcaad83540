"""The batcher in isolation: runs on the caller when idle, merges queued batches on its worker, waits to fill."""

from __future__ import annotations

import threading

import numpy as np

from rnnpolicy.serve.batcher import Batch, Batcher, run_batches


def _runner(calls: list[int], gate: threading.Event | None = None):
    def run(obs, episode_start, state):
        if gate is not None:
            gate.wait(10)
        calls.append(len(obs))
        return obs * 2, tuple(s + 1 for s in state)

    return run


def _batch(values: list[float]) -> Batch:
    k = len(values)
    return Batch([None] * k, np.array(values, np.float32)[:, None], np.zeros(k, np.float32),
                 (np.zeros((1, k, 2), np.float32),))


def test_run_batches_splits_one_call_back_into_its_batches():
    calls: list[int] = []
    a, b = _batch([1, 2]), _batch([3])
    run_batches(_runner(calls), [a, b])
    assert calls == [3] and a.packed[:, 0].tolist() == [2, 4] and b.packed[:, 0].tolist() == [6]
    assert a.next_state[0].shape == (1, 2, 2) and b.next_state[0].shape == (1, 1, 2)


def test_a_failing_call_fails_every_batch_of_it():
    def failing(obs, episode_start, state):
        raise RuntimeError("boom")

    a, b = _batch([1]), _batch([2])
    run_batches(failing, [a, b])
    assert str(a.error) == str(b.error) == "boom" and a.packed is None


def test_an_idle_model_is_held_by_the_caller_and_busy_one_queues_for_the_worker():
    calls: list[int] = []
    gate = threading.Event()
    delivered: list[list[Batch]] = []
    done = threading.Event()

    def deliver(batches):
        delivered.append(batches)
        if sum(b.size for batch in delivered for b in batch) == 3:
            done.set()

    batcher = Batcher(_runner(calls, gate), deliver, max_batch=8)
    try:
        assert batcher.try_hold() and not batcher.try_hold()  # held: a second caller must submit
        batcher.submit(_batch([1]))
        batcher.submit(_batch([2, 3]))
        batcher.release()  # the worker takes both queued batches as one call
        gate.set()
        assert done.wait(10)
        assert calls == [3] and [b.size for b in delivered[0]] == [1, 2]
        assert delivered[0][1].packed[:, 0].tolist() == [4, 6]
    finally:
        batcher.close()
    assert not batcher.alive


def test_with_max_wait_us_the_worker_waits_for_a_batch_to_fill():
    calls: list[int] = []
    done = threading.Event()
    batcher = Batcher(_runner(calls), lambda batches: done.set(), max_batch=4, max_wait_us=2_000_000)
    try:
        assert not batcher.try_hold()  # batches wait to fill: never run on the caller
        batcher.submit(_batch([1, 2]))
        batcher.submit(_batch([3, 4]))  # full: runs without waiting out the 2 s
        assert done.wait(1.5)
        assert calls == [4]
    finally:
        batcher.close()
