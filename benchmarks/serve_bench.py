"""Serving benchmark: PolicyService vs a bare gRPC echo server with the same messages, same machine.

Measures throughput and p50/p99 latency of unary and streaming steps at 1, 16 and 128
concurrent sessions and of StepBatch with 256 sessions, against ``rnnpolicy serve`` (a 128-unit
LSTM Q-network, random weights) and against echo servers that answer the same messages without a
model: the ceiling for Python gRPC here. There are two echo servers, grpcio's thread-pool server
and its asyncio server (the asyncio one carries twice the streams at 128 concurrent ones, the
threaded one is sometimes ahead on unary calls), and each round's ceiling is the one with the
higher throughput in that scenario. Also the resident memory of 10,000 sessions and, with
``--soak N``, memory over N steps with sessions opening and closing.

Soak criterion: the server keeps the ids of closed sessions (tombstones) up to a cap that
scales with --max-sessions, so its memory legitimately grows until the cap is full. The soak
server runs with ``--max-sessions 1024`` (cap 4,096 ids, full after 16 rounds of 256 sessions)
and growth is the least-squares trend of RSS from the later of the round where the cap is full
and the 25% mark (warm-up: allocator arenas) to the end, limit 5 MB; single samples move by a few
MB either way. The load average is
recorded beside every figure: on a busy machine the latencies are not comparable.

Servers run as subprocesses; the load comes from one asyncio client process (this one).
Results: benchmarks/results/serve_bench.json and serve_bench.md.

The default clients' scenarios (CLIENT_PLAN) measure what a user of ``rnnpolicy.clients`` gets: steps/s and
p50/p99 of 128 sessions through AsyncPolicyClient and through PolicyClient from 16 threads, against the raw
128-stream figure of the same round (target: the asyncio client >= 0.8x).

    python benchmarks/serve_bench.py [--seconds 3] [--rounds 3] [--soak 1000000]
    python benchmarks/serve_bench.py --only client-async:128,client-sync:128   # the clients' scenarios alone

Before and after a change, in one run: ``--baseline PYTHON`` adds a policy server started by another
interpreter, one whose ``rnnpolicy`` is the version to compare with, to every round of the echo
comparison (same export, same flags, same echo servers, in the same rotation), and writes its figures and
``serve / baseline`` per scenario. ``benchmarks/baseline_env.sh COMMIT DIR`` makes such an interpreter
from a commit of this repository (a worktree plus a venv that borrows this one's packages):

    bash benchmarks/baseline_env.sh ee3d204 /tmp/rnnpolicy-before
    python benchmarks/serve_bench.py --soak 300000 --baseline /tmp/rnnpolicy-before/venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from machine import cpu_ticks, loadavg, steal_pct
from rnnpolicy.v1 import policy_pb2 as pb
from rnnpolicy.v1 import policy_pb2_grpc

OBS_DIM, ACTIONS, HIDDEN = 16, 6, 128
ECHO_MODES = ("threads", "asyncio")  # the target's reference: the better of the two per scenario and round
BUSY_POLL_US = 1000  # serve --busy-poll-us for the low-latency mode, and the same for its echo
BURST = 128  # concurrent session calls at once: below the servers' limit of 256 concurrent RPCs
RESULTS = Path(__file__).parent / "results"
SERVICE = "/rnnpolicy.v1.PolicyService/"
PLAN = [("unary", 1), ("unary", 16), ("unary", 128), ("stream", 1), ("stream", 16), ("stream", 128), ("batch", 256)]
CLIENT_PLAN = [("client-async", 128), ("client-sync", 128)]
"""128 sessions stepping back to back through rnnpolicy.clients' default (streaming) sessions: AsyncPolicyClient
in one event loop, and PolicyClient from SYNC_THREADS threads; against `serve` only, each round right after the
raw 128-stream scenario (the same messages, written by hand) against the same server, its reference."""
SYNC_THREADS = 16
SOLO: dict = {}
"""Scenarios outside the echo comparison, by --only name: an async function (port, server pid) -> a results dict
with its "targets", run against a fresh policy server of their own (in a full run after the memory figure)."""


# ------------------------------------------------------------------ the echo server (a subprocess)


def _echo_step(request):
    return pb.StepResponse(session_id=request.session_id, seq=request.seq, discrete_action=1,
                           q_values=[0.5] * ACTIONS, model_version="echo")


def _echo_batch(request):
    n = len(request.session_ids)
    obs = np.array(request.obs, dtype=np.float32)  # the same decode work the real server does
    return pb.StepBatchResponse(seqs=request.seqs, discrete_actions=[1] * n,
                                q_values=(np.zeros((n, ACTIONS), np.float32) + obs.sum() * 0).ravel().tolist(),
                                model_version="echo")


def _echo_handlers(step, stream, batch, create) -> grpc.GenericRpcHandler:
    handlers = {
        "Step": grpc.unary_unary_rpc_method_handler(step, pb.StepRequest.FromString, pb.StepResponse.SerializeToString),
        "StepStream": grpc.stream_stream_rpc_method_handler(stream, pb.StepRequest.FromString, pb.StepResponse.SerializeToString),
        "StepBatch": grpc.unary_unary_rpc_method_handler(batch, pb.StepBatchRequest.FromString, pb.StepBatchResponse.SerializeToString),
        "CreateSession": grpc.unary_unary_rpc_method_handler(create, pb.CreateSessionRequest.FromString, pb.CreateSessionResponse.SerializeToString),
    }
    return grpc.method_handlers_generic_handler("rnnpolicy.v1.PolicyService", handlers)


def run_echo_server(mode: str) -> None:
    """Answer Step/StepStream/StepBatch/CreateSession with same-shaped responses and no model.

    ``threads``: grpcio's thread-pool server; ``asyncio``: its asyncio server. Which is faster
    depends on the load, so the benchmark runs both and takes the better as the ceiling.
    """
    from concurrent import futures

    def create(request, context):
        return pb.CreateSessionResponse(session_id=os.urandom(12).hex())

    if mode == "threads":
        def stream(requests, context):
            for request in requests:
                yield _echo_step(request)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=256), maximum_concurrent_rpcs=256)
        server.add_generic_rpc_handlers((_echo_handlers(lambda r, c: _echo_step(r), stream, lambda r, c: _echo_batch(r), create),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(f"echo serving on 127.0.0.1:{port};", file=sys.stderr, flush=True)
        server.wait_for_termination()
        return

    async def step_async(request, context):
        return _echo_step(request)

    async def stream_async(requests, context):
        async for request in requests:
            yield _echo_step(request)

    async def batch_async(request, context):
        return _echo_batch(request)

    async def create_async(request, context):
        return create(request, context)

    async def main() -> None:
        server = grpc.aio.server(maximum_concurrent_rpcs=256)
        server.add_generic_rpc_handlers((_echo_handlers(step_async, stream_async, batch_async, create_async),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"echo serving on 127.0.0.1:{port};", file=sys.stderr, flush=True)
        await server.wait_for_termination()

    if mode == "asyncio":
        asyncio.run(main())
        return
    # asyncio-busy-poll: the same server on a loop that polls before it sleeps, as `serve --busy-poll-us` does.
    from rnnpolicy.serve.server import BusyPollSelector

    selector = BusyPollSelector()
    selector.busy_poll = BUSY_POLL_US / 1e6
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        runner.run(main())


# ------------------------------------------------------------------ servers


def export_bench_model(root: Path) -> Path:
    import torch

    from rnnpolicy.encoding import ObsEncoding
    from rnnpolicy.export import export_checkpoint
    from rnnpolicy.spec import ActionSpec, PolicySpec
    from rnnpolicy.train.checkpoint import save_checkpoint
    from rnnpolicy.train.models import build_model

    spec = PolicySpec(kind="q", cell="lstm", num_layers=1, hidden_size=HIDDEN,
                      obs_encoding=ObsEncoding.flat(OBS_DIM), action=ActionSpec("discrete", n=ACTIONS))
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "checkpoint.pt", spec, build_model(spec), {})
    export_checkpoint(ckpt, root / "export", verify=False)
    return root / "export"


def start(cmd: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"server {cmd} exited before serving")
        if "serving" in line:
            # Keep reading its log (one line per session event): a full pipe would block the server.
            threading.Thread(target=proc.stderr.read, name="drain-server-log", daemon=True).start()
            return proc, int(line.split("127.0.0.1:")[1].split(";")[0])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


# ------------------------------------------------------------------ load


class Load:
    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.obs = np.random.default_rng(0).normal(size=OBS_DIM).astype(np.float32).tolist()

    async def sessions(self, n: int) -> list[str]:
        return [(await self.stub.CreateSession(pb.CreateSessionRequest(model="bench"))).session_id for _ in range(n)]

    async def unary(self, sid: str, stop_at: float, lat: list[float], seq0: int) -> int:
        seq = seq0
        while time.perf_counter() < stop_at:
            seq += 1
            t = time.perf_counter()
            await self.stub.Step(pb.StepRequest(session_id=sid, seq=seq, obs=self.obs, deterministic=True))
            lat.append(time.perf_counter() - t)
        return seq

    async def stream(self, sid: str, stop_at: float, lat: list[float], seq0: int) -> int:
        call = self.stub.StepStream()
        seq = seq0
        while time.perf_counter() < stop_at:
            seq += 1
            t = time.perf_counter()
            await call.write(pb.StepRequest(session_id=sid, seq=seq, obs=self.obs, deterministic=True))
            response = await call.read()
            lat.append(time.perf_counter() - t)
            if response.HasField("error"):
                raise RuntimeError(response.error.message)
        await call.done_writing()
        return seq

    async def batch(self, ids: list[str], stop_at: float, lat: list[float], seq0: int) -> int:
        n = len(ids)
        obs = np.tile(np.asarray(self.obs, np.float32), n).tolist()
        seq = seq0
        while time.perf_counter() < stop_at:
            seq += 1
            t = time.perf_counter()
            response = await self.stub.StepBatch(pb.StepBatchRequest(session_ids=ids, seqs=[seq] * n, obs=obs, deterministic=True))
            lat.append(time.perf_counter() - t)
            if response.errors:
                raise RuntimeError(response.errors[0].message)
        return seq


async def scenario(port: int, kind: str, sessions: int, seconds: float) -> dict:
    load = Load(port)
    ids = await load.sessions(sessions)
    lat: list[float] = []
    ticks = cpu_ticks()
    # warm-up, then measure
    for phase, length in (("warm", min(1.0, seconds / 3)), ("measure", seconds)):
        lat.clear()
        stop_at = time.perf_counter() + length
        t0 = time.perf_counter()
        if kind == "batch":
            seqs = [await load.batch(ids, stop_at, lat, getattr(load, "_seq", 0))]
            load._seq = seqs[0]
            steps = len(lat) * sessions
        else:
            fn = load.unary if kind == "unary" else load.stream
            seq0 = getattr(load, "_seqs", [0] * sessions)
            load._seqs = await asyncio.gather(*(fn(sid, stop_at, lat, s) for sid, s in zip(ids, seq0)))
            steps = len(lat)
        elapsed = time.perf_counter() - t0
    steal = steal_pct(ticks, cpu_ticks())
    await load.channel.close()
    ms = np.asarray(lat) * 1e3
    return {"kind": kind, "sessions": sessions, "calls": len(lat), "steps": steps, "seconds": round(elapsed, 3),
            "steps_per_s": round(steps / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4), "loadavg_1m": loadavg()[0],
            "steal_pct": steal}


def _client_row(kind: str, sessions: int, lat: list[float], elapsed: float, ticks: tuple[int, int]) -> dict:
    ms = np.asarray(lat) * 1e3
    return {"kind": kind, "sessions": sessions, "calls": len(lat), "steps": len(lat), "seconds": round(elapsed, 3),
            "steps_per_s": round(len(lat) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4), "loadavg_1m": loadavg()[0],
            "steal_pct": steal_pct(ticks, cpu_ticks())}


def _phases(seconds: float) -> tuple[tuple[str, float], ...]:
    return (("warm", min(1.0, seconds / 3)), ("measure", seconds))


async def default_async_client(port: int, sessions: int, seconds: float) -> dict:
    """``sessions`` AsyncPolicyClient sessions (its default: a stream each) stepping back to back in one loop."""
    from rnnpolicy.clients import AsyncPolicyClient

    obs = np.random.default_rng(0).normal(size=OBS_DIM).astype(np.float32)
    lat: list[float] = []
    ticks = cpu_ticks()

    async def drive(session, stop_at: float) -> None:
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await session.step(obs)
            lat.append(time.perf_counter() - t)

    async with AsyncPolicyClient(f"127.0.0.1:{port}") as client:
        opened = [await client.session("bench") for _ in range(sessions)]
        for _phase, length in _phases(seconds):
            lat.clear()
            ticks = cpu_ticks()
            t0 = time.perf_counter()
            await asyncio.gather(*(drive(s, t0 + length) for s in opened))
            elapsed = time.perf_counter() - t0
        row = _client_row("client-async", sessions, lat, elapsed, ticks)
        await asyncio.gather(*(s.close() for s in opened))
    return row


def default_sync_client(port: int, sessions: int, seconds: float, threads: int = SYNC_THREADS) -> dict:
    """``sessions`` PolicyClient sessions (a stream each) on one client, stepped back to back by ``threads``
    threads, each stepping its share of the sessions in turn."""
    from rnnpolicy.clients import PolicyClient

    obs = np.random.default_rng(0).normal(size=OBS_DIM).astype(np.float32)

    def drive(group, stop_at: float, lat: list[float]) -> None:
        while time.perf_counter() < stop_at:
            for session in group:
                t = time.perf_counter()
                session.step(obs)
                lat.append(time.perf_counter() - t)

    with PolicyClient(f"127.0.0.1:{port}") as client:
        opened = [client.session("bench") for _ in range(sessions)]
        for _phase, length in _phases(seconds):
            lats: list[list[float]] = [[] for _ in range(threads)]
            ticks = cpu_ticks()
            t0 = time.perf_counter()
            workers = [threading.Thread(target=drive, args=(opened[i::threads], t0 + length, lats[i]))
                       for i in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - t0
        for session in opened:
            session.close()
    return _client_row("client-sync", sessions, [x for lat in lats for x in lat], elapsed, ticks)


def client_scenario(port: int, kind: str, sessions: int, seconds: float) -> dict:
    if kind == "client-async":
        return asyncio.run(default_async_client(port, sessions, seconds))
    return default_sync_client(port, sessions, seconds)


async def resident_memory(port: int, pid: int, count: int = 10_000) -> dict:
    load = Load(port)
    await asyncio.sleep(0.5)
    idle = rss_mb(pid)
    ids = []
    for start_ in range(0, count, BURST):
        ids += await asyncio.gather(*(load.stub.CreateSession(pb.CreateSessionRequest(model="bench"))
                                      for _ in range(min(BURST, count - start_))))
    ids = [r.session_id for r in ids]
    obs = np.tile(np.asarray(load.obs, np.float32), 256).tolist()
    for lo in range(0, count, 256):
        chunk = ids[lo:lo + 256]
        await load.stub.StepBatch(pb.StepBatchRequest(session_ids=chunk, seqs=[1] * len(chunk), obs=obs[:len(chunk) * OBS_DIM]))
    await asyncio.sleep(0.5)
    full = rss_mb(pid)
    await load.channel.close()
    return {"sessions": count, "idle_rss_mb": round(idle, 1), "rss_mb": round(full, 1), "delta_mb": round(full - idle, 1)}


SOAK_MAX_SESSIONS = 1024


async def soak(port: int, pid: int, total_steps: int) -> dict:
    """Open 256 sessions, step them 50 times in StepBatches, close them; repeat until total_steps.

    Growth is measured from the later of the round that fills the tombstone cap and the 25% mark.
    """
    from rnnpolicy.serve.directory import tombstone_cap

    cap = tombstone_cap(SOAK_MAX_SESSIONS)
    load = Load(port)
    obs = np.tile(np.asarray(load.obs, np.float32), 256).tolist()
    done, samples, t0, rounds, cap_full_at = 0, [], time.perf_counter(), 0, None
    load_start = loadavg()
    while done < total_steps:
        ids = []
        for _ in range(256 // BURST):
            ids += [r.session_id for r in await asyncio.gather(*(load.stub.CreateSession(pb.CreateSessionRequest(model="bench"))
                                                                 for _ in range(BURST)))]
        for seq in range(1, 51):
            await load.stub.StepBatch(pb.StepBatchRequest(session_ids=ids, seqs=[seq] * 256, obs=obs))
        for lo in range(0, 256, BURST):
            await asyncio.gather(*(load.stub.CloseSession(pb.CloseSessionRequest(session_id=s)) for s in ids[lo:lo + BURST]))
        done += 256 * 50
        rounds += 1
        samples.append((done, rss_mb(pid), threads(pid)))
        if cap_full_at is None and rounds * 256 >= cap:
            cap_full_at = len(samples) - 1
    await load.channel.close()
    quarter = max(0, len(samples) // 4 - 1)
    if cap_full_at is None:  # too short a soak to fill the cap: the growth includes tombstones
        base = quarter
    else:
        base = max(quarter, cap_full_at)
    late = samples[-max(1, len(samples) // 10):]
    after_base = samples[base:base + max(1, len(samples) // 10)]
    # RSS moves by a few MB either way between samples (allocator arenas); the trend is the least-squares
    # line through every sample after the baseline, taken over the span it covers.
    steps_after, rss_after = np.array([s[0] for s in samples[base:]]), np.array([s[1] for s in samples[base:]])
    trend = float(np.polyfit(steps_after, rss_after, 1)[0] * (steps_after[-1] - steps_after[0])) if len(steps_after) > 2 else float("nan")
    return {"steps": done, "seconds": round(time.perf_counter() - t0, 1), "max_sessions": SOAK_MAX_SESSIONS,
            "sessions_closed": rounds * 256, "tombstone_cap": cap, "cap_full_at_step": None if cap_full_at is None
            else samples[cap_full_at][0], "baseline_at_step": samples[base][0],
            "rss_mb_first_round": round(samples[0][1], 1), "rss_mb_baseline": round(samples[base][1], 1),
            "rss_mb_end": round(samples[-1][1], 1), "growth_mb": round(samples[-1][1] - samples[base][1], 1),
            "growth_mb_late_windows": round(float(np.median([s[1] for s in late]) - np.median([s[1] for s in after_base])), 1),
            "growth_mb_trend": round(trend, 1), "rss_mb_max": round(max(s[1] for s in samples), 1),
            "rss_mb_samples": [[step, round(rss, 1)] for step, rss, _ in samples],
            "threads_baseline": samples[base][2], "threads_end": samples[-1][2],
            "loadavg_start": load_start, "loadavg_end": loadavg()}


# ------------------------------------------------------------------ a fleet of robots (10,000 open streams)


FLEET_ROBOTS = 10_000
FLEET_CONNECTIONS = 10_000  # a connection per robot, as robots in the field have
FLEET_RAMP_S = 20.0  # the robots connect over this long, at random times
FLEET_RSS_LIMIT_MB = 300
FLEET_MEASURE_S = 20.0


async def fleet(port: int, pid: int, seconds: float, robots: int = FLEET_ROBOTS,
                connections: int = FLEET_CONNECTIONS) -> dict:
    """``robots`` robots, each with its own session and its own StepStream held open throughout, each stepping
    now and then: together at half the server's 128-stream throughput (measured first, on the same server), each
    at its own phase. Measured over ``seconds`` once every stream is open: every step answered, p50/p99 latency,
    server RSS and threads against idle, calls refused."""
    from rnnpolicy.serve.limits import raise_open_file_limit

    raise_open_file_limit(connections)  # this client's side of every connection
    calibration = await scenario(port, "stream", 128, 3.0)
    rate = calibration["steps_per_s"] / 2
    period = robots / rate  # seconds between one robot's steps
    idle_rss, idle_threads = rss_mb(pid), threads(pid)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(min(connections, robots))]
    stubs = [policy_pb2_grpc.PolicyServiceStub(c) for c in channels]
    obs = np.random.default_rng(0).normal(size=OBS_DIM).astype(np.float32).tolist()
    ids: list[str] = []
    for lo in range(0, robots, BURST):
        ids += [r.session_id for r in await asyncio.gather(*(stubs[(lo + i) % len(stubs)].CreateSession(
            pb.CreateSessionRequest(model="bench")) for i in range(min(BURST, robots - lo))))]
    rng = np.random.default_rng(1)
    start = time.perf_counter() + 1.0
    measure_from = start + FLEET_RAMP_S + period  # every robot connected and stepped at least once
    measure_to = measure_from + seconds
    lat: list[float] = []
    late: list[float] = []
    counts = {"sent": 0, "answered": 0, "open": 0, "most_open": 0}
    errors: dict[str, int] = {}
    held = {"rss_mb": 0.0, "threads": 0, "open": 0}

    async def robot(i: int) -> None:
        due = start + rng.uniform(0, FLEET_RAMP_S)
        await asyncio.sleep(due - time.perf_counter())
        call = stubs[i % len(stubs)].StepStream(metadata=(("x-session-id", ids[i]),))
        counts["open"] += 1
        counts["most_open"] = max(counts["most_open"], counts["open"])
        seq = 0
        try:
            while due < measure_to:
                seq += 1
                t = time.perf_counter()
                counts["sent"] += 1
                await call.write(pb.StepRequest(session_id=ids[i], seq=seq, obs=obs, deterministic=True))
                response = await call.read()
                if response.HasField("error"):
                    errors[response.error.message] = errors.get(response.error.message, 0) + 1
                else:
                    counts["answered"] += 1
                if measure_from <= t < measure_to:
                    lat.append(time.perf_counter() - t)
                    late.append(t - due)
                due += period * rng.uniform(0.5, 1.5)  # now and then, not in lockstep
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await call.done_writing()
            await call.read()
        except grpc.aio.AioRpcError as err:
            key = f"{err.code().name} {err.details()!r} at {'the first step' if seq == 1 else 'a later step'}"
            errors[key] = errors.get(key, 0) + 1
        finally:
            counts["open"] -= 1

    async def sample_while_held() -> None:
        await asyncio.sleep(measure_from + seconds / 2 - time.perf_counter())
        held.update(rss_mb=rss_mb(pid), threads=threads(pid), open=counts["open"])

    ticks = cpu_ticks()
    await asyncio.gather(sample_while_held(), *(robot(i) for i in range(robots)))
    steal = steal_pct(ticks, cpu_ticks())
    for channel in channels:
        await channel.close()
    ms = np.asarray(lat) * 1e3
    return {"robots": robots, "connections": len(channels), "calibration_128_streams_steps_per_s":
            calibration["steps_per_s"], "target_steps_per_s": round(rate, 1), "step_period_s": round(period, 3),
            "measured_s": seconds, "steps_per_s": round(len(lat) / seconds, 1),
            "sent": counts["sent"], "answered": counts["answered"], "errors": errors,
            "streams_open_at_sample": held["open"], "most_streams_open": counts["most_open"],
            "p50_ms": round(float(np.percentile(ms, 50)), 3) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 3) if len(ms) else None,
            "client_late_p99_ms": round(float(np.percentile(np.asarray(late) * 1e3, 99)), 3) if late else None,
            "idle_rss_mb": round(idle_rss, 1), "rss_mb": round(held["rss_mb"], 1),
            "rss_delta_mb": round(held["rss_mb"] - idle_rss, 1), "idle_threads": idle_threads,
            "threads": held["threads"], "loadavg_1m": loadavg()[0], "steal_pct": steal}


async def fleet_scenario(port: int, pid: int) -> dict:
    row = await fleet(port, pid, FLEET_MEASURE_S)
    return row | {"targets": fleet_targets(row)}


def fleet_targets(row: dict) -> list[dict]:
    """The issue's target for the fleet: every stream held at once, every step answered, RSS bounded."""
    held = row["streams_open_at_sample"] == row["robots"] and row["most_streams_open"] == row["robots"]
    return [{"target": f"{row['robots']:,} streams held at once, every step answered, no call refused",
             "value": f"{row['streams_open_at_sample']} open, {row['answered']}/{row['sent']} answered, "
                      f"errors {row['errors'] or 'none'}",
             "limit": "all", "met": held and row["answered"] == row["sent"] and not row["errors"]},
            {"target": f"RSS with {row['robots']:,} streams held <= {FLEET_RSS_LIMIT_MB} MB above idle",
             "value": row["rss_delta_mb"], "limit": FLEET_RSS_LIMIT_MB, "met": row["rss_delta_mb"] <= FLEET_RSS_LIMIT_MB}]


# ------------------------------------------------------------------ main


SOLO["fleet:10000"] = fleet_scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per scenario")
    parser.add_argument("--soak", type=int, default=0, help="also run N steps with sessions opening and closing")
    parser.add_argument("--echo-server", choices=(*ECHO_MODES, "asyncio-busy-poll"), help=argparse.SUPPRESS)
    parser.add_argument("--max-wait-us", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over all scenarios; each scenario runs every echo server and both policy servers "
                             "back to back, the order rotating per round; figures are medians over rounds "
                             "(default %(default)s)")
    parser.add_argument("--baseline", metavar="PYTHON",
                        help="also run a policy server with this interpreter's rnnpolicy in every round of the echo "
                             "comparison (a version to compare with; see benchmarks/baseline_env.sh)")
    parser.add_argument("--only", type=_scenarios, default=PLAN + CLIENT_PLAN, metavar="KIND:SESSIONS,...",
                        help="run only these scenarios, e.g. stream:1,stream:128 or client-async:128 (for iterating; "
                             "the targets need all, and the memory and soak runs are skipped)")
    args = parser.parse_args()
    if args.echo_server:
        run_echo_server(args.echo_server)
        return 0
    plan = [s for s in args.only if s in PLAN]
    client_plan = [s for s in args.only if s in CLIENT_PLAN]
    full = plan == PLAN and client_plan == CLIENT_PLAN
    solo = [name for name in SOLO if full or name in args.only]
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__,
                                 "loadavg_at_start": loadavg()},
                     "model": f"q-network, LSTM {HIDDEN} units, obs_dim {OBS_DIM}, {ACTIONS} actions",
                     "seconds_per_scenario": args.seconds, "max_wait_us": args.max_wait_us, "rounds": args.rounds}
    if args.baseline:
        try:
            results["baseline_version"] = baseline_version(args.baseline)
        except ValueError as exc:
            parser.error(str(exc))
    with tempfile.TemporaryDirectory() as tmp:
        export = export_bench_model(Path(tmp))
        serve_cmd = [sys.executable, "-m", "rnnpolicy.cli", "serve", "--model", f"bench={export}", "--port", "0",
                     "--max-sessions", "20000", "--max-wait-us", str(args.max_wait_us)]
        all_names = [*(f"echo-{mode}" for mode in (*ECHO_MODES, "asyncio-busy-poll")), "serve", "serve-busy-poll",
                     "baseline"]
        servers = {"serve": start(serve_cmd)} if plan or client_plan else {}
        if plan:  # the default clients' scenarios alone need only `serve`
            servers |= {f"echo-{mode}": start([sys.executable, __file__, "--echo-server", mode])
                        for mode in (*ECHO_MODES, "asyncio-busy-poll")}
            servers["serve-busy-poll"] = start(serve_cmd + ["--busy-poll-us", str(BUSY_POLL_US)])
            if args.baseline:
                servers["baseline"] = start([args.baseline, *serve_cmd[1:]])
        try:
            names = [name for name in all_names if name in servers]
            runs: dict[str, list[list[dict]]] = {name: [[] for _ in plan] for name in [*all_names, "echo"]}
            client_runs: dict[str, list[dict]] = {kind: [] for kind in ["reference", *(k for k, _ in client_plan)]}
            for round_ in range(args.rounds):
                for i, (kind, n) in enumerate(plan):
                    # Back to back, the order rotating per round, so all see the same machine load.
                    for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                        row = asyncio.run(scenario(servers[name][1], kind, n, args.seconds))
                        print(f"round {round_} {name}", row, flush=True)
                        runs[name][i].append(row | {"server": name})
                    # The ceiling of this round: the better echo server (by throughput).
                    runs["echo"][i].append(max((runs[f"echo-{mode}"][i][-1] for mode in ECHO_MODES),
                                               key=lambda r: r["steps_per_s"]))
                if client_plan:  # the raw reference right before the clients, so all see the same machine load
                    client_runs["reference"].append(asyncio.run(scenario(servers["serve"][1], "stream", 128,
                                                                         args.seconds)) | {"server": "serve"})
                    print(f"round {round_} serve raw reference", client_runs["reference"][-1], flush=True)
                    for kind, n in client_plan:
                        client_runs[kind].append(client_scenario(servers["serve"][1], kind, n, args.seconds)
                                                 | {"server": "serve"})
                        print(f"round {round_} serve {kind}", client_runs[kind][-1], flush=True)
            results["runs"] = runs
            if client_plan:
                results["clients"] = client_results(client_runs)
            for name in ("echo", "serve", "serve-busy-poll", "echo-asyncio-busy-poll"):
                results[name] = [median_row(rows) for rows in runs[name]]
            results["ratios"] = ratios(runs, "serve", "echo", plan)
            results["ratios_busy_poll"] = ratios(runs, "serve-busy-poll", "echo", plan)
            results["ratios_busy_poll_echo"] = ratios(runs, "serve-busy-poll", "echo-asyncio-busy-poll", plan)
            if "baseline" in servers:
                results["baseline"] = [median_row(rows) for rows in runs["baseline"]]
                results["ratios_baseline"] = ratios(runs, "baseline", "echo", plan)
                results["serve_vs_baseline"] = ratios(runs, "serve", "baseline", plan)
        finally:
            for proc, _port in servers.values():
                stop(proc)
        proc, port = start(serve_cmd) if full else (None, 0)
        try:
            if full:
                results["memory_10k_sessions"] = asyncio.run(resident_memory(port, proc.pid))
                print("memory", results["memory_10k_sessions"], flush=True)
        finally:
            if proc is not None:
                stop(proc)
        for name in solo:
            proc, port = start(serve_cmd)
            try:
                results[name] = asyncio.run(SOLO[name](port, proc.pid))
                print(name, results[name], flush=True)
            finally:
                stop(proc)
        if args.soak and full:
            soak_cmd = serve_cmd[:serve_cmd.index("--max-sessions") + 1] + [str(SOAK_MAX_SESSIONS)] + \
                serve_cmd[serve_cmd.index("--max-sessions") + 2:]
            proc, port = start(soak_cmd)
            try:
                results["soak"] = asyncio.run(soak(port, proc.pid, args.soak))
                print("soak", results["soak"], flush=True)
            finally:
                stop(proc)
    results["machine"]["loadavg_at_end"] = loadavg()
    results["targets"] = targets(results, "serve", results["ratios"]) + [t for name in solo for t in results[name]["targets"]]
    results["targets_busy_poll"] = targets(results, "serve-busy-poll", results["ratios_busy_poll"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "serve_bench" if full else "serve_bench_partial"  # a partial run does not replace the full results
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def _scenarios(text: str) -> list[tuple[str, int]]:
    """``stream:1,stream:128`` as [("stream", 1), ("stream", 128)], each one of PLAN's or CLIENT_PLAN's scenarios."""
    chosen = []
    for item in text.split(","):
        kind, _, sessions = item.partition(":")
        if item in SOLO:
            chosen.append(item)
            continue
        if not sessions.isdigit() or (kind, int(sessions)) not in PLAN + CLIENT_PLAN:
            raise argparse.ArgumentTypeError(f"unknown scenario {item!r}; expected KIND:SESSIONS from "
                                             f"{', '.join([f'{k}:{n}' for k, n in PLAN + CLIENT_PLAN] + list(SOLO))}")
        chosen.append((kind, int(sessions)))
    return chosen


def ratios(runs: dict[str, list[list[dict]]], server: str, reference: str, plan: list[tuple[str, int]]) -> list[dict]:
    """Per scenario, the medians over rounds of ``server``'s throughput and p50 divided by ``reference``'s, and the
    lowest and highest per-round throughput ratio (the spread of this run)."""
    out = []
    for i, (kind, n) in enumerate(plan):
        pairs = list(zip(runs[server][i], runs[reference][i]))
        throughput = [s["steps_per_s"] / e["steps_per_s"] for s, e in pairs]
        out.append({"kind": kind, "sessions": n,
                    "throughput": round(float(np.median(throughput)), 3),
                    "throughput_range": [round(min(throughput), 3), round(max(throughput), 3)],
                    "p50": round(float(np.median([s["p50_ms"] / e["p50_ms"] for s, e in pairs])), 3)})
    return out


def baseline_version(python: str) -> str:
    """Where ``python``'s rnnpolicy comes from: its directory and git commit (``ValueError`` if it has none)."""
    try:
        found = subprocess.run([python, "-c", "import rnnpolicy.serve, os; print(os.path.dirname(rnnpolicy.serve.__file__))"],
                               capture_output=True, text=True)
    except OSError as exc:
        raise ValueError(f"--baseline {python!r} cannot be run: {exc.strerror}") from None
    if found.returncode != 0:
        raise ValueError(f"--baseline {python!r} cannot import rnnpolicy.serve: "
                         f"{(found.stderr.strip().splitlines() or ['?'])[-1]}")
    where = found.stdout.strip()
    commit = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"{where} at {commit.stdout.strip() or 'an unknown commit'}"


def client_results(client_runs: dict[str, list[dict]]) -> dict:
    """The default clients' figures (medians over rounds) and their throughput over the raw 128-stream reference
    of the same round (the median of the per-round ratios)."""
    reference = client_runs["reference"]
    out = {"reference_stream_128": median_row(reference)}
    for kind, rows in client_runs.items():
        if kind != "reference":
            ratio = float(np.median([c["steps_per_s"] / r["steps_per_s"] for c, r in zip(rows, reference)]))
            out[kind] = median_row(rows) | {"throughput_vs_raw_stream": round(ratio, 3)}
    return out


def median_row(rows: list[dict]) -> dict:
    """One scenario's figures over rounds: the median of each, and which servers they came from."""
    out = dict(rows[0])
    for key in ("steps_per_s", "p50_ms", "p99_ms", "loadavg_1m", "steal_pct"):
        out[key] = round(float(np.median([r[key] for r in rows])), 4)
    out["server"] = "/".join(sorted({r["server"] for r in rows}))
    return out


def _row(results: dict, server: str, kind: str, n: int) -> dict:
    return next(r for r in results[server] if r["kind"] == kind and r["sessions"] == n)


def targets(results: dict, server: str, server_ratios: list[dict]) -> list[dict]:
    """The issue's targets for ``server`` ("serve" or "serve-busy-poll"); memory and soak for "serve" only."""
    ratio = {(r["kind"], r["sessions"]): r for r in server_ratios}
    out = []
    if ("stream", 1) in ratio:
        p50_1 = ratio[("stream", 1)]["p50"]
        out.append({"target": "1 streaming session p50 <= 1.3x echo (median of per-round ratios)", "value": p50_1,
                    "limit": 1.3, "met": p50_1 <= 1.3})
    if ("stream", 128) in ratio:
        throughput_128 = ratio[("stream", 128)]["throughput"]
        out.append({"target": "128 streaming sessions throughput >= 0.7x echo (median of per-round ratios)",
                    "value": throughput_128, "limit": 0.7, "met": throughput_128 >= 0.7})
    if ("batch", 256) in ratio:
        batch = _row(results, server, "batch", 256)
        out.append({"target": "StepBatch(256) >= 50,000 session-steps/s", "value": batch["steps_per_s"],
                    "limit": 50000, "met": batch["steps_per_s"] >= 50000})
    if server != "serve":
        return out
    clients = results.get("clients", {})
    if "client-async" in clients:
        ratio = clients["client-async"]["throughput_vs_raw_stream"]
        out.append({"target": "128 sessions through the default AsyncPolicyClient >= 0.8x the raw 128 streams "
                              "(median of per-round ratios)", "value": ratio, "limit": 0.8, "met": ratio >= 0.8})
    mem = results.get("memory_10k_sessions")
    if mem:
        out.append({"target": "10,000 sessions <= 100 MB above idle", "value": mem["delta_mb"], "limit": 100,
                    "met": mem["delta_mb"] <= 100})
    if "soak" in results:
        trend = results["soak"]["growth_mb_trend"]
        out.append({"target": "no memory growth with sessions opening and closing (MB: least-squares trend of RSS "
                              "from the later of tombstone cap full and 25% mark, to the end)",
                    "value": trend, "limit": 5, "met": trend <= 5})
    return out


def markdown(results: dict) -> str:
    lines = ["# Serving benchmark", "", f"Machine: {results['machine']}; model: {results['model']}; "
             f"{results['seconds_per_scenario']} s per scenario; max_wait_us={results['max_wait_us']}; "
             f"{results['rounds']} rounds.", "",
             "Each scenario runs against three echo servers (grpcio's thread-pool and asyncio servers, and the asyncio "
             f"one polling {BUSY_POLL_US} us before it sleeps) and the policy server in its default mode and with "
             f"`--busy-poll-us {BUSY_POLL_US}`, back to back, the order rotating per round. The echo figure of a round "
             "(the targets' reference) is the better of the two plain echo servers by throughput (`echo server`: which "
             "one, over the rounds). The figures are medians over the rounds, and the ratios are medians of the "
             "per-round ratios. Load average (1 min) and the vCPU time the hypervisor gave to other guests (steal) "
             "are recorded per scenario (medians): other work on the machine or the host inflates latencies.", "",
             "## Default mode (`rnnpolicy serve`)", "",
             "| mode | sessions | echo server | echo steps/s | serve steps/s | throughput ratio | echo p50 ms | serve p50 ms "
             "| p50 ratio | echo p99 ms | serve p99 ms | load echo/serve | steal % echo/serve |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e, s, r in zip(results["echo"], results["serve"], results["ratios"]):
        lines.append(f"| {s['kind']} | {s['sessions']} | {e['server'].replace('echo-', '')} | {e['steps_per_s']:.0f} | {s['steps_per_s']:.0f} | "
                     f"{r['throughput']:.2f} | {e['p50_ms']:.3f} | {s['p50_ms']:.3f} | {r['p50']:.2f} | "
                     f"{e['p99_ms']:.3f} | {s['p99_ms']:.3f} | {e['loadavg_1m']}/{s['loadavg_1m']} "
                     f"| {e['steal_pct']}/{s['steal_pct']} |")
    lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['limit']} | {'yes' if t['met'] else 'NO'} |" for t in results["targets"]]
    lines += ["", f"## Low-latency mode (`rnnpolicy serve --busy-poll-us {BUSY_POLL_US}`)", "",
              "Ratios against the same echo as above, and against the echo polling as long (`vs polling echo`).", "",
              "| mode | sessions | echo steps/s | serve steps/s | throughput ratio | echo p50 ms | serve p50 ms | p50 ratio "
              "| polling echo steps/s | polling echo p50 ms | throughput vs polling echo | p50 vs polling echo "
              "| serve p99 ms | steal % serve |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e, s, r, pe, pr in zip(results["echo"], results["serve-busy-poll"], results["ratios_busy_poll"],
                               results["echo-asyncio-busy-poll"], results["ratios_busy_poll_echo"]):
        lines.append(f"| {s['kind']} | {s['sessions']} | {e['steps_per_s']:.0f} | {s['steps_per_s']:.0f} | "
                     f"{r['throughput']:.2f} | {e['p50_ms']:.3f} | {s['p50_ms']:.3f} | {r['p50']:.2f} | "
                     f"{pe['steps_per_s']:.0f} | {pe['p50_ms']:.3f} | {pr['throughput']:.2f} | {pr['p50']:.2f} | "
                     f"{s['p99_ms']:.3f} | {s['steal_pct']} |")
    lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['limit']} | {'yes' if t['met'] else 'NO'} |"
              for t in results["targets_busy_poll"]]
    if "baseline" in results:
        lines += ["", "## Before and after, same run (`--baseline`)", "",
                  f"`baseline`: the policy server of {results['baseline_version']}, in every round beside `serve` "
                  "(same export, flags and echo servers). `serve / baseline`: the median of the per-round throughput "
                  "ratios, with the lowest and highest round.", "",
                  "| mode | sessions | baseline steps/s | serve steps/s | baseline / echo | serve / echo "
                  "| serve / baseline | rounds' range | baseline p50 ms | serve p50 ms | p50 serve / baseline |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for b, s, rb, rs, sb in zip(results["baseline"], results["serve"], results["ratios_baseline"],
                                    results["ratios"], results["serve_vs_baseline"]):
            low, high = sb["throughput_range"]
            lines.append(f"| {s['kind']} | {s['sessions']} | {b['steps_per_s']:.0f} | {s['steps_per_s']:.0f} | "
                         f"{rb['throughput']:.2f} | {rs['throughput']:.2f} | {sb['throughput']:.2f} | {low:.2f}-{high:.2f} "
                         f"| {b['p50_ms']:.3f} | {s['p50_ms']:.3f} | {sb['p50']:.2f} |")
    if "clients" in results:
        clients = results["clients"]
        ref = clients["reference_stream_128"]
        lines += ["", "## Default clients (`rnnpolicy.clients`, a stream per session) against `serve`", "",
                  f"128 sessions stepping back to back: `AsyncPolicyClient` in one event loop, `PolicyClient` from "
                  f"{SYNC_THREADS} threads; the reference is the raw 128-stream scenario against the same server, run "
                  "right before them in each round.", "",
                  "| scenario | steps/s | p50 ms | p99 ms | throughput vs raw streams | load | steal % |",
                  "|---|---|---|---|---|---|---|",
                  f"| raw 128 streams | {ref['steps_per_s']:.0f} | {ref['p50_ms']:.3f} | {ref['p99_ms']:.3f} | 1.00 "
                  f"| {ref['loadavg_1m']} | {ref['steal_pct']} |"]
        for kind in ("client-async", "client-sync"):
            if kind in clients:
                row = clients[kind]
                lines.append(f"| {kind} 128 | {row['steps_per_s']:.0f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                             f"{row['throughput_vs_raw_stream']:.2f} | {row['loadavg_1m']} | {row['steal_pct']} |")
    if "memory_10k_sessions" in results:
        lines += ["", f"memory_10k_sessions: {results['memory_10k_sessions']}"]
    for name in SOLO:
        if name in results:
            lines += ["", f"{name}: { {k: v for k, v in results[name].items() if k != 'targets'} } (targets above)"]
    if "soak" in results:
        soak = {k: v for k, v in results["soak"].items() if k != "rss_mb_samples"}
        lines += ["", f"soak: {soak} (RSS after every 12,800 steps in serve_bench.json)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
