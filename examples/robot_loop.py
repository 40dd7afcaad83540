"""A fixed-rate control loop over a StepStream: report latency percentiles and deadline misses.

    rnnpolicy serve --model robot=EXPORT_DIR --port 50051 &
    python examples/robot_loop.py --model robot --hz 200 --seconds 5

Each tick sends the current (here synthetic) observation and must have its action back before
the next tick; a late answer counts as a deadline miss and the loop keeps its schedule.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rnnpolicy.clients import PolicyClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--model", default="")
    parser.add_argument("--hz", type=float, default=200.0, help="control rate")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    period = 1.0 / args.hz
    latencies, misses = [], 0
    with PolicyClient(args.target) as client, client.session(args.model) as session:
        dim = session.spec.obs_dim
        rng = np.random.default_rng(0)
        ticks = int(args.seconds * args.hz)
        next_tick = time.perf_counter()
        for tick in range(ticks):
            obs = rng.normal(size=dim).astype(np.float32)  # stand-in for sensor readings
            sent = time.perf_counter()
            session.step(obs, episode_start=tick == 0)
            done = time.perf_counter()
            latencies.append(done - sent)
            next_tick += period
            if done > next_tick:
                misses += 1
                next_tick = done  # skip, do not try to catch up
            else:
                time.sleep(max(0.0, next_tick - time.perf_counter()))
    ms = np.asarray(latencies) * 1e3
    print(f"{len(ms)} ticks at {args.hz:g} Hz: latency p50 {np.percentile(ms, 50):.3f} ms, "
          f"p90 {np.percentile(ms, 90):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms, max {ms.max():.3f} ms; "
          f"deadline misses {misses} ({100 * misses / len(ms):.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
