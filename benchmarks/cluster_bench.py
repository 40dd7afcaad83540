"""Cluster benchmark: the Redis session store, Envoy in front, failover, and Redis memory per session.

Scenarios (``--only`` picks some; results: benchmarks/results/cluster_bench.json and .md):

- ``memory``: Redis memory per resident session of a 128-unit LSTM (state_h and state_c rows of
  128 floats each and the cached output row), by ``MEMORY USAGE`` per key and by the growth of
  ``used_memory`` over ``--sessions`` sessions; Redis commands per step (``INFO commandstats``)
  with StepBatch-sized commits of 256 rows; the commit's round trip (p50/p99) and the Python cost
  of encoding a record. Needs only ``redis-server``.
- ``store``: one replica with the Redis store against one with the in-memory store, same client and
  messages: 128 streams' throughput (target >= 0.7x), StepBatch(256) (>= 0.7x), one stream's p50
  (<= 1.3x).
- ``envoy``: the same replica through Envoy against direct (128 streams, one stream).
- ``failover``: three replicas behind Envoy, 32 sessions stepping over streams through the Python
  client; ``kill -9`` of one replica: p50/p99/max step latency in the second around the kill, and
  the time until every session has stepped again (target <= 2 s).
- ``scaling``: one, two and three replicas behind Envoy, 128 streams (on this 2-core machine).

The load comes from this process (serve_bench's ``Load``). Replicas, Envoy and redis-server are
subprocesses on free loopback ports, stopped at the end.

    python benchmarks/cluster_bench.py [--only memory,store,envoy,failover,scaling] [--seconds 3] [--sessions 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import loadavg
from rnnpolicy.serve.processes import LocalCluster, RedisServer, Replica

RESULTS = Path(__file__).parent / "results"
SCENARIOS = ("memory", "store", "envoy", "failover", "scaling")
HIDDEN, ACTIONS = 128, 6
WIDTH = ACTIONS + 1  # the cached output row of a q-network: q_values and the action
BATCH = 256


# ------------------------------------------------------------------ memory: needs only redis-server


def bench_record(index: int, *, sampling: bool) -> object:
    from rnnpolicy.serve.records import SessionRecord

    rng = np.random.default_rng(index)
    generator = np.random.default_rng(index).bit_generator.state if sampling else None
    return SessionRecord(
        session_id=f"{index:06d}-" + os.urandom(9).hex()[:17],  # as long as secrets.token_urlsafe(18): 24 characters
        model="bench", version="0123456789ab", principal="", seed=index if sampling else None, rng=generator,
        last_seq=0, last_used=time.time(), epoch=1,
        state=(rng.normal(size=(1, HIDDEN)).astype(np.float32), rng.normal(size=(1, HIDDEN)).astype(np.float32)),
        state_names=("state_h", "state_c"), last_out=rng.normal(size=WIDTH).astype(np.float32))


async def _memory(url: str, sessions: int) -> dict:
    from dataclasses import replace

    from rnnpolicy.serve.records import encode_record
    from rnnpolicy.serve.redis_store import RedisStore
    from rnnpolicy.serve.store import Commit

    store = RedisStore.from_url(url, ttl=300.0)
    client = store._redis
    out: dict = {"model": f"LSTM {HIDDEN} units, 1 layer; cached output row {WIDTH} floats", "sessions": sessions}
    for sampling in (False, True):
        await client.flushall()
        base = (await client.info("memory"))["used_memory"]
        records = [bench_record(i, sampling=sampling) for i in range(sessions)]
        for lo in range(0, sessions, 32):
            await asyncio.gather(*(store.insert(r) for r in records[lo:lo + 32]))
        used = (await client.info("memory"))["used_memory"]
        usage = [await store.memory_usage(r.session_id) for r in records[:: max(1, sessions // 200)]]
        key = "sampling" if sampling else "deterministic"
        out[key] = {"record_bytes": len(encode_record(records[0])),
                    "memory_usage_per_key_bytes": int(np.median(usage)),
                    "used_memory_per_session_bytes": round((used - base) / sessions, 1)}
    # Commits: StepBatch-sized batches, one script call each.
    await client.config_resetstat()
    steps, latencies = 0, []
    t0 = time.perf_counter()
    for lo in range(0, sessions, BATCH):
        chunk = records[lo:lo + BATCH]
        commits = [Commit(replace(r, last_seq=1), 0) for r in chunk]
        t = time.perf_counter()
        applied = await store.commit(commits)
        latencies.append(time.perf_counter() - t)
        assert all(applied), "a benchmark commit was refused"
        steps += len(chunk)
    elapsed = time.perf_counter() - t0
    stats = await client.info("commandstats")
    counted = {k: v["calls"] for k, v in stats.items() if not k.startswith(("cmdstat_info", "cmdstat_config"))}
    calls = sum(counted.values())
    ms = np.asarray(latencies) * 1e3
    out["commit"] = {"rows_per_call": BATCH, "calls": len(latencies), "steps": steps,
                     # round trips: the script calls; commands: those plus what each script ran inside Redis
                     "round_trips_per_step": round(counted.get("cmdstat_evalsha", 0) / steps, 5),
                     "redis_commands_per_step": round(calls / steps, 4),
                     "commands": {k.removeprefix("cmdstat_"): n for k, n in counted.items()},
                     "p50_ms_per_call": round(float(np.percentile(ms, 50)), 3),
                     "p99_ms_per_call": round(float(np.percentile(ms, 99)), 3),
                     "steps_per_s_one_connection": round(steps / elapsed, 1)}
    record = records[0]
    t = time.thread_time()  # CPU time: what the encoding costs a replica, whatever else the machine runs
    for _ in range(2000):
        encode_record(record)
    out["encode_record_us"] = round((time.thread_time() - t) / 2000 * 1e6, 2)
    await store.close()
    return out


def memory(tmp: Path, sessions: int) -> dict:
    redis = RedisServer(tmp / "redis-memory").start().wait_ready()
    try:
        result = asyncio.run(_memory(redis.url, sessions))
    finally:
        redis.stop()
    per = result["deterministic"]["used_memory_per_session_bytes"]
    result["one_million_sessions_gib"] = round(per * 1_000_000 / 2**30, 2)
    return result


# ------------------------------------------------------------------ the scenarios that need replicas


def _load():
    sys.path.insert(0, str(Path(__file__).parent))
    import serve_bench

    return serve_bench


def _export(tmp: Path) -> Path:
    return _load().export_bench_model(tmp / "model")


def _step_scenarios(port: int, seconds: float, plan: list[tuple[str, int]]) -> list[dict]:
    scenario = _load().scenario
    return [asyncio.run(scenario(port, kind, n, seconds)) for kind, n in plan]


def store_vs_memory(tmp: Path, export: Path, seconds: float) -> dict:
    plan = [("stream", 128), ("batch", BATCH), ("stream", 1)]
    redis = RedisServer(tmp / "redis-store").start().wait_ready()
    out: dict = {}
    try:
        for name, url in (("memory", ""), ("redis", redis.url)):
            replica = Replica({"bench": export}, tmp / f"store-{name}", store_url=url,
                              extra_args=["--quiet-sessions", "--max-sessions", "20000"]).start().wait_ready()
            try:
                out[name] = _step_scenarios(replica.port, seconds, plan)
            finally:
                replica.stop()
    finally:
        redis.stop()
    mem, red = out["memory"], out["redis"]
    out["ratios"] = {
        "stream_128_throughput": round(red[0]["steps_per_s"] / mem[0]["steps_per_s"], 3),
        "batch_256_throughput": round(red[1]["steps_per_s"] / mem[1]["steps_per_s"], 3),
        "stream_1_p50": round(red[2]["p50_ms"] / mem[2]["p50_ms"], 3),
    }
    out["targets"] = {"stream_128_throughput >= 0.7": out["ratios"]["stream_128_throughput"] >= 0.7,
                      "batch_256_throughput >= 0.7": out["ratios"]["batch_256_throughput"] >= 0.7,
                      "stream_1_p50 <= 1.3": out["ratios"]["stream_1_p50"] <= 1.3}
    return out


def through_envoy(tmp: Path, export: Path, seconds: float) -> dict:
    plan = [("stream", 128), ("stream", 1)]
    with LocalCluster({"bench": export}, tmp / "envoy", replicas=1,
                      serve_args=["--quiet-sessions", "--max-sessions", "20000"]) as cluster:
        direct = _step_scenarios(cluster.replicas[0].port, seconds, plan)
        proxied = _step_scenarios(int(cluster.endpoint.rpartition(":")[2]), seconds, plan)
    return {"direct": direct, "envoy": proxied,
            "ratios": {"stream_128_throughput": round(proxied[0]["steps_per_s"] / direct[0]["steps_per_s"], 3),
                       "stream_1_p50": round(proxied[1]["p50_ms"] / direct[1]["p50_ms"], 3)}}


def scaling(tmp: Path, export: Path, seconds: float) -> dict:
    out = {}
    for replicas in (1, 2, 3):
        with LocalCluster({"bench": export}, tmp / f"scaling-{replicas}", replicas=replicas,
                          serve_args=["--quiet-sessions", "--max-sessions", "20000"]) as cluster:
            out[str(replicas)] = _step_scenarios(int(cluster.endpoint.rpartition(":")[2]), seconds, [("stream", 128)])[0]
    return out


async def _failover(cluster: LocalCluster, sessions: int, seconds: float) -> dict:
    from rnnpolicy.clients import AsyncPolicyClient

    steps: list[tuple[float, float, int]] = []  # (end time, latency, session index)
    stop_at = time.perf_counter() + seconds
    obs = np.zeros(16, np.float32)

    errors: list[str] = []

    async def drive(index: int, client) -> None:
        try:
            async with client.session("bench") as session:  # the default client: a stream per session
                while time.perf_counter() < stop_at:
                    t = time.perf_counter()
                    await session.step(obs)
                    steps.append((time.perf_counter(), time.perf_counter() - t, index))
        except Exception as exc:  # noqa: BLE001 - a client-visible error is a result, reported
            errors.append(repr(exc))

    async with AsyncPolicyClient(cluster.endpoint) as client:
        tasks = [asyncio.create_task(drive(i, client)) for i in range(sessions)]
        await asyncio.sleep(seconds / 3)
        victim = cluster.replicas[0]
        killed_at = time.perf_counter()
        victim.signal(signal.SIGKILL)
        await asyncio.gather(*tasks)
    around = np.asarray([lat for end, lat, _ in steps if killed_at - 0.5 <= end - lat <= killed_at + 0.5]) * 1e3
    after = {}
    for end, _lat, index in steps:
        if end > killed_at and index not in after:
            after[index] = end
    recovered = max(after.values()) - killed_at if len(after) == sessions else float("nan")
    return {"sessions": sessions, "steps": len(steps), "client_errors": errors,
            "p50_ms_around_kill": round(float(np.percentile(around, 50)), 3),
            "p99_ms_around_kill": round(float(np.percentile(around, 99)), 3),
            "max_ms_around_kill": round(float(around.max()), 3),
            "seconds_until_every_session_stepped_again": round(recovered, 3),
            "target_recovery_s <= 2": bool(recovered <= 2.0)}


def failover(tmp: Path, export: Path, seconds: float) -> dict:
    with LocalCluster({"bench": export}, tmp / "failover", replicas=3,
                      serve_args=["--quiet-sessions"]) as cluster:
        return asyncio.run(_failover(cluster, 32, max(6.0, seconds * 3)))


# ------------------------------------------------------------------ main


def markdown(results: dict) -> str:
    lines = ["# Cluster benchmark", "", f"Machine: {results['machine']}", ""]
    if "memory" in results:
        m = results["memory"]
        lines += ["## Redis memory per resident session", "",
                  f"{m['model']}; {m['sessions']} sessions.", "",
                  "| records | record bytes | MEMORY USAGE per key | used_memory per session |", "|---|---|---|---|"]
        for key in ("deterministic", "sampling"):
            r = m[key]
            lines.append(f"| {key} | {r['record_bytes']} | {r['memory_usage_per_key_bytes']} | "
                         f"{r['used_memory_per_session_bytes']} |")
        c = m["commit"]
        lines += ["", f"Commits of {c['rows_per_call']} rows: {c['round_trips_per_step']} round trips and "
                      f"{c['redis_commands_per_step']} Redis commands per step "
                      f"({c['commands']}), p50 {c['p50_ms_per_call']} ms / p99 {c['p99_ms_per_call']} ms per call, "
                      f"{c['steps_per_s_one_connection']} steps/s on one connection; encoding a record "
                      f"{m['encode_record_us']} us of CPU.", "",
                  f"One million sessions: {m['one_million_sessions_gib']} GiB of Redis memory (deterministic).", ""]
    for name in ("store", "envoy", "failover", "scaling"):
        if name in results:
            lines += [f"## {name}", "", "```", json.dumps(results[name], indent=2), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS), metavar="SCENARIO,...",
                        help=f"scenarios to run, from {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per load scenario")
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions stored by the memory scenario")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; expected some of {', '.join(SCENARIOS)}")
    import redis

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "redis_py": redis.__version__, "loadavg_at_start": loadavg()},
                     "seconds_per_scenario": args.seconds}
    stem = "cluster_bench" if set(chosen) == set(SCENARIOS) else "cluster_bench_" + "_".join(chosen)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "memory" in chosen:
            results["memory"] = memory(tmp, args.sessions)
            print("memory", results["memory"], flush=True)
            write(results, stem)
        export = _export(tmp) if set(chosen) - {"memory"} else None
        for name, run in (("store", store_vs_memory), ("envoy", through_envoy), ("failover", failover),
                          ("scaling", scaling)):
            if name in chosen:
                results[name] = run(tmp, export, args.seconds)
                print(name, results[name], flush=True)
                write(results, stem)
    print(markdown(results))
    return 0


def write(results: dict, stem: str) -> None:
    """Write the results so far (a later scenario's failure keeps the earlier ones)."""
    results["machine"]["loadavg_at_end"] = loadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(results))


if __name__ == "__main__":
    sys.exit(main())
