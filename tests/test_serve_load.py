"""Bounded loopback load: client threads open, step and close sessions at random for a fixed number
of steps. No errors but the intended ones, no state mixing (every answer matches an offline rollout),
no leaked sessions, slots, objects or memory, and the server's metrics equal what the clients counted."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from rnnpolicy.clients import PolicyClient, PolicyError, Session
from rnnpolicy.export.interface import ONNX_FILE
from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.serve.batcher import Batch
from rnnpolicy.serve.coordinator import Job, Step
from rnnpolicy.serve.directory import Session as ServerSession
from rnnpolicy.v1 import policy_pb2 as pb

MODELS = ("q_lstm", "pg_gru")
HEAD = {"q_lstm": "q_values", "pg_gru": "logits"}
THREADS = 6
PHASE_STEPS = 2000
"""Step requests per phase (a StepBatch row counts one), shared by all threads."""
MAX_OPEN = 3
"""Sessions a thread holds at once (StepBatch steps those on one model together)."""
RSS_GROWTH_BOUND = 8 * 2**20
"""RSS growth allowed from the end of the warm-up phase to the end of the identical measured one.

Sessions, slots, session objects and threads are checked by count below; what RSS adds is a leak per
step: 4 KiB a step (a request, a response and a packed row never freed) over the phase's 2,000 steps
is 8 MiB (checked: keeping 8 KiB per unary or stream step, about 1,100 of the 2,000, grows it 12 MiB).
Without a leak the growth is allocator noise, glibc arenas of the ~20 threads (gRPC pollers and
handlers, batchers, clients, stream readers) settling on their high-water marks: under 1 MiB measured
after a warm-up phase of the same size, and less once :func:`_rss` hands cached free blocks back first."""


class Reference:
    """One model's ONNX file stepped offline; each :class:`Rollout` keeps one session's state."""

    def __init__(self, path) -> None:
        self.sess = ort.InferenceSession(str(path / ONNX_FILE), providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.state_shapes = {i.name: [d if isinstance(d, int) else 1 for d in i.shape]
                             for i in self.sess.get_inputs() if i.name.startswith("state_")}


class Rollout:
    def __init__(self, ref: Reference) -> None:
        self.ref = ref
        self.state = {name: np.zeros(shape, np.float32) for name, shape in ref.state_shapes.items()}

    def step(self, obs: np.ndarray, start: bool) -> dict[str, np.ndarray]:
        feeds = {"obs": obs[None], "episode_start": np.array([float(start)], np.float32), **self.state}
        out = dict(zip(self.ref.outputs, self.ref.sess.run(None, feeds)))
        for name in self.state:
            self.state[name] = out["next_" + name]
        return out


@dataclass
class Live:
    """A session a client thread holds, with its offline twin."""

    session: Session
    model: str
    lifetime: int
    rollout: Rollout
    fresh: int = 0
    last: tuple | None = None
    """The last answer as (action, head values, value), to compare a repeat with."""


@dataclass
class Tally:
    """What one client thread did, counted the way the server counts it."""

    steps: Counter = field(default_factory=Counter)     # (model, code name) -> answered steps
    fresh: Counter = field(default_factory=Counter)     # model -> steps that ran (not answered from the cache)
    rpcs: Counter = field(default_factory=Counter)      # rpc -> answered calls (a stream counts per message)
    rpcs_ok: Counter = field(default_factory=Counter)   # rpc -> calls that succeeded
    opened: Counter = field(default_factory=Counter)    # model -> sessions
    closed: Counter = field(default_factory=Counter)
    repeats: int = 0
    compared: int = 0

    def add(self, other: Tally) -> None:
        for name in ("steps", "fresh", "rpcs", "rpcs_ok", "opened", "closed"):
            getattr(self, name).update(getattr(other, name))
        self.repeats += other.repeats
        self.compared += other.compared


class Budget:
    def __init__(self, total: int) -> None:
        self.left = total
        self._lock = threading.Lock()

    def take(self, n: int = 1) -> int:
        """Up to ``n`` steps of the budget (0 when spent)."""
        with self._lock:
            got = min(n, self.left)
            self.left -= got
            return got


def _answer(result) -> tuple:
    head = result.q_values if result.q_values is not None else result.logits
    return int(result.action), tuple(head.tolist()), result.value


def _check(answer: tuple, expected: dict, model: str) -> None:
    action, head, val = answer
    assert action == int(expected["action"][0]), (model, answer, expected)
    np.testing.assert_allclose(head, expected[HEAD[model]][0], atol=1e-5)
    if "value" in expected:
        assert val == pytest.approx(float(expected["value"][0]), abs=1e-5)


class Worker:
    def __init__(self, index: int, phase: int, client: PolicyClient, refs: dict[str, Reference], budget: Budget) -> None:
        self.rng = np.random.default_rng([phase, index])  # reproducible per thread and phase
        self.client = client
        self.refs = refs
        self.budget = budget
        self.tally = Tally()
        self.pool: list[Live] = []

    def run(self) -> None:
        try:
            while self.budget.left > 0:
                if not self.pool or (len(self.pool) < MAX_OPEN and self.rng.random() < 0.25):
                    self._open()
                live = self.pool[int(self.rng.integers(len(self.pool)))]
                if not self._act(live):
                    break
                if live.fresh >= live.lifetime:
                    self._close(live)
        finally:
            for live in list(self.pool):
                self._close(live)

    # ---------------------------------------------------------------- session lifecycle

    def _open(self) -> None:
        model = MODELS[int(self.rng.integers(len(MODELS)))]
        transport = "stream" if self.rng.random() < 0.4 else "unary"
        session = self.client.session(model, transport=transport)
        self.tally.opened[model] += 1
        self.pool.append(Live(session, model, int(self.rng.integers(1, 41)), Rollout(self.refs[model])))

    def _close(self, live: Live) -> None:
        live.session.close()
        self.tally.closed[live.model] += 1
        self.pool.remove(live)

    # ---------------------------------------------------------------- one action

    def _rpc(self, live: Live) -> str:
        return "StepStream" if live.session.transport == "stream" else "Step"

    def _obs(self, live: Live, extra: int = 0) -> np.ndarray:
        dim = live.session.spec.obs_dim + extra
        return self.rng.normal(size=dim).astype(np.float32)

    def _act(self, live: Live) -> bool:
        u = self.rng.random()
        if u < 0.08:
            return self._batch(live)
        if not self.budget.take():
            return False
        if u < 0.13 and live.session.seq >= 1:
            self._wrong_seq(live)
        elif u < 0.18:
            self._wrong_obs(live)
        elif u < 0.26 and live.last is not None:
            self._repeat(live)
        else:
            self._step(live)
        return True

    def _step(self, live: Live) -> None:
        obs = self._obs(live)
        start = live.session.seq == 0 or self.rng.random() < 0.1
        result = live.session.step(obs, episode_start=start)
        self._ok(live, self._rpc(live), fresh=1)
        live.last = _answer(result)
        _check(live.last, live.rollout.step(obs, start), live.model)
        self.tally.compared += 1

    def _repeat(self, live: Live) -> None:
        """Resend the last seq (as a client does that lost the answer): the same answer, nothing advances."""
        seq = live.session.seq
        live.session.seq = seq - 1
        result = live.session.step(self._obs(live))  # the obs of a repeat is not looked at
        assert result.seq == seq == live.session.seq
        assert _answer(result) == live.last
        self._ok(live, self._rpc(live), fresh=0)
        self.tally.repeats += 1

    def _wrong_seq(self, live: Live) -> None:
        """An intended failure: a seq behind the last (a stale client), FAILED_PRECONDITION, nothing changes."""
        seq = live.session.seq
        live.session.seq = seq - 2  # the request carries seq - 1 (0 for seq 1)
        try:
            live.session.step(self._obs(live))
        except PolicyError as exc:
            assert exc.code == grpc.StatusCode.FAILED_PRECONDITION and exc.expected_seq == seq + 1, exc
        else:
            pytest.fail(f"seq {seq - 1} after {seq} was accepted")
        finally:
            live.session.seq = seq
        self._failed(live, self._rpc(live), "FAILED_PRECONDITION")

    def _wrong_obs(self, live: Live) -> None:
        extra = 1 if self.rng.random() < 0.5 else -1
        try:
            live.session.step(self._obs(live, extra))
        except PolicyError as exc:
            assert exc.code == grpc.StatusCode.INVALID_ARGUMENT and "obs has" in exc.message, exc
        else:
            pytest.fail("an observation of the wrong length was accepted")
        self._failed(live, self._rpc(live), "INVALID_ARGUMENT")

    def _batch(self, live: Live) -> bool:
        """One StepBatch of this thread's open sessions on ``live``'s model, sometimes with a stale-seq row."""
        group = [other for other in self.pool if other.model == live.model]
        group = group[:self.budget.take(len(group))]
        if not group:
            return False
        stepped = [i for i, other in enumerate(group) if other.session.seq >= 1]
        bad = int(self.rng.choice(stepped)) if stepped and self.rng.random() < 0.3 else -1  # a stale-seq row
        obs = [self._obs(other) for other in group]
        starts = [other.session.seq == 0 or bool(self.rng.random() < 0.1) for other in group]
        seqs = [other.session.seq + 1 if i != bad else other.session.seq - 1 for i, other in enumerate(group)]
        request = pb.StepBatchRequest(session_ids=[other.session.session_id for other in group], seqs=seqs,
                                      obs=np.concatenate(obs).tolist(), episode_start=starts, deterministic=True)
        response = self.client.call("StepBatch", request)
        assert [e.index for e in response.errors] == ([bad] if bad >= 0 else [])
        head = np.array(getattr(response, HEAD[live.model])).reshape(len(group), -1)
        self.tally.rpcs["StepBatch"] += 1
        self.tally.rpcs_ok["StepBatch"] += 1
        for i, other in enumerate(group):
            if i == bad:
                error = response.errors[0]
                assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
                assert error.expected_seq == other.session.seq + 1
                self.tally.steps[(other.model, "FAILED_PRECONDITION")] += 1
                continue
            other.session.seq += 1  # the batch applied this session's next step
            self.tally.steps[(other.model, "OK")] += 1
            self.tally.fresh[other.model] += 1
            other.fresh += 1
            value = response.values[i] if len(response.values) else None
            other.last = (int(response.discrete_actions[i]), tuple(head[i].tolist()), value)
            _check(other.last, other.rollout.step(obs[i], starts[i]), other.model)
            self.tally.compared += 1
        return True

    def _ok(self, live: Live, rpc: str, fresh: int) -> None:
        self.tally.steps[(live.model, "OK")] += 1
        self.tally.fresh[live.model] += fresh
        self.tally.rpcs[rpc] += 1
        self.tally.rpcs_ok[rpc] += 1
        live.fresh += fresh

    def _failed(self, live: Live, rpc: str, code: str) -> None:
        self.tally.steps[(live.model, code)] += 1
        self.tally.rpcs[rpc] += 1


def _rss() -> int:
    """This process's resident memory once freed memory is handed back: a collection, then glibc's
    ``malloc_trim`` (where the C library has it), so that free blocks cached in the arenas of this and
    other tests' threads do not count as growth (one such run read 8.1 MiB in the full suite, 0.2-0.4 alone)."""
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_objects(*types: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) in types)  # not isinstance: no proxies' __class__ looked up


def _threads_after_streams_end(timeout: float = 10.0) -> list[str]:
    """Names of the live rnnpolicy threads (the server's loop, batchers and reaper, the clients' stream readers) once
    the reader threads of the closed streams ended (at most ``timeout`` s). Threads of other tests in this process
    (tqdm monitors, pollers) come and go on their own and are not counted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(t.name == "rnnpolicy-stream-reader" for t in threading.enumerate()):
            break
        time.sleep(0.05)
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("rnnpolicy"))


def test_loopback_load_no_errors_no_leaks_metrics_agree(serve_export_dirs):
    started = time.monotonic()
    srv, port = create_server({name: serve_export_dirs[name] for name in MODELS}, "127.0.0.1:0",
                              ServeConfig(max_sessions=64, session_ttl=120))
    refs = {name: Reference(serve_export_dirs[name]) for name in MODELS}
    clients = [PolicyClient(f"127.0.0.1:{port}", retries=0) for _ in range(THREADS)]  # no hidden retries
    total = Tally()
    try:
        rss, threads, objects, timed = [], [], [], []
        for phase in (1, 2):
            budget = Budget(PHASE_STEPS)
            workers = [Worker(i, phase, client, refs, budget) for i, client in enumerate(clients)]
            errors: list[str] = []

            def drive(worker: Worker) -> None:
                try:
                    worker.run()
                except BaseException:  # noqa: BLE001 - reported by the main thread
                    errors.append(traceback.format_exc())

            running = [threading.Thread(target=drive, args=(w,), name=f"load-{phase}-{i}") for i, w in enumerate(workers)]
            for t in running:
                t.start()
            for t in running:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in running), "a client thread hung"
            assert not errors, errors[0]
            assert budget.left == 0
            phase_tally = Tally()
            for w in workers:
                phase_tally.add(w.tally)
                total.add(w.tally)
            assert sum(phase_tally.steps.values()) == PHASE_STEPS

            # nothing leaked: no session, slot, in-flight job or stream thread outlives the phase
            assert len(srv.directory) == 0
            for name in MODELS:
                slots = srv.models[name].slots
                assert slots.free == slots.capacity, name
                assert srv.directory.sessions_of(srv.models[name]) == 0
            threads.append(_threads_after_streams_end())
            assert "rnnpolicy-stream-reader" not in threads[-1], threads[-1]  # every closed stream ended
            assert _live_objects(Session) == 0  # every client session object freed
            objects.append(_live_objects(ServerSession, Job, Step, Batch))
            rss.append(_rss())

            # the server's metrics equal what the clients counted, exactly
            value = srv.metrics.value
            for (model, code), n in total.steps.items():
                assert value("rnnpolicy_steps_total", {"model": model, "code": code}) == n, (model, code)
            assert value("rnnpolicy_steps_total") == sum(total.steps.values()) == phase * PHASE_STEPS
            for name in MODELS:
                labels = {"model": name}
                assert value("rnnpolicy_batch_size_sum", labels) == total.fresh[name]  # rows run, repeats not
                assert 1 <= value("rnnpolicy_batch_size_count", labels) <= total.fresh[name]
                assert value("rnnpolicy_sessions_created_total", labels) == total.opened[name]
                assert value("rnnpolicy_sessions_closed_total", labels) == total.opened[name] == total.closed[name]
                assert value("rnnpolicy_sessions_active", labels) == 0
            assert value("rnnpolicy_sessions_expired_total") == value("rnnpolicy_sessions_refused_total") == 0
            assert value("rnnpolicy_state_bytes_resident") == 0
            latency = {rpc: value("rnnpolicy_step_latency_seconds_count", {"rpc": rpc})
                       for rpc in ("Step", "StepStream", "StepBatch")}
            timed.append((latency, Counter(total.rpcs), Counter(total.rpcs_ok)))
            assert srv.directory.tombstones == sum(total.opened.values())  # every one closed, none expired

        # the workload really mixed everything it is meant to
        assert all(total.steps[(m, c)] > 0 for m in MODELS for c in ("OK", "FAILED_PRECONDITION", "INVALID_ARGUMENT"))
        assert total.repeats > 0 and all(total.rpcs[r] > 0 for r in ("Step", "StepStream", "StepBatch"))
        assert total.compared == sum(total.fresh.values())
        # Server-side step records left: each model's batcher worker keeps a reference to the last batch it
        # ran until the next, so some may remain: a Job, a Step and a Session per row of one batch per model
        # plus the Batch, at most the open sessions of that model.
        assert all(n <= len(MODELS) * THREADS * MAX_OPEN * 4 for n in objects), objects
        assert threads[1] == threads[0], threads
        growth = rss[1] - rss[0]
        assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth / 2**20:.1f} MiB over the measured phase"
        # every step timed once, per rpc (last: test_serve_metrics pins these semantics one by one)
        for latency, rpcs, rpcs_ok in timed:
            assert latency["StepBatch"] == rpcs["StepBatch"]
            assert rpcs_ok["Step"] <= latency["Step"] <= rpcs["Step"]  # whether a refused Step is timed: see there
            assert latency["StepStream"] == rpcs["StepStream"]
        print(f"load: {2 * PHASE_STEPS} steps, {sum(total.opened.values())} sessions, {total.rpcs}, "
              f"RSS {rss[0] / 2**20:.1f} -> {rss[1] / 2**20:.1f} MiB, {time.monotonic() - started:.1f} s")
    finally:
        for client in clients:
            client.close()
        srv.stop(None)
