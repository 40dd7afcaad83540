"""Recurrent PPO on rnnpolicy/CartPoleNoVel-v0: seeds reaching 475, time to it, and throughput.

Each seed trains with the environment's defaults, a 100k-step budget, and an in-process
deterministic evaluation every ``--eval-every`` steps that stops the run once its mean return
reaches 475. Time to threshold is the run's wall time at that evaluation (evaluations
included); steps/s excludes evaluation time. A separate line measures raw training
throughput of a 64-unit LSTM without evaluation. Writes ``results/ppo_cartpole.json`` and ``.md``.

    python benchmarks/ppo_cartpole_bench.py --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rnnpolicy.train import ppo
from rnnpolicy.train.api import resolve, seed_everything
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.runlog import RunLog

ENV = "rnnpolicy/CartPoleNoVel-v0"
THRESHOLD = 475.0
RESULTS = Path(__file__).parent / "results"


def train_seed(seed: int, total_steps: int, out: str, **overrides) -> dict:
    config, algo = resolve(
        TrainConfig(algo="ppo", env=ENV, out=out, total_steps=total_steps, hidden_size=64, seed=seed, progress=False),
        overrides,
    )
    seed_everything(seed)
    run = RunLog(out, total_steps, progress=False)
    start = time.perf_counter()
    try:
        ppo.learn(config, algo, run)
    finally:
        run.close()
    last = run.rows[-1]
    reached = last["eval_return"] >= THRESHOLD
    return {
        "seed": seed,
        "reached": bool(reached),
        "steps": int(last["step"]),
        "wall_s": round(last["wall_time"], 2) if reached else None,
        "train_s": round(time.perf_counter() - start, 2),
        "eval_s": round(last["eval_time"], 2),
        "steps_per_s": round(last["steps_per_s"]),
        "final_eval_return": max((r["eval_return"] for r in run.rows if r["eval_return"] == r["eval_return"]), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=4096)
    parser.add_argument("--throughput-steps", type=int, default=40_960)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for seed in args.seeds:
            result = train_seed(seed, args.total_steps, f"{tmp}/seed{seed}", target_return=THRESHOLD, eval_every=args.eval_every)
            print(json.dumps(result), flush=True)
            runs.append(result)
        # Last, in a warm process: steady-state training throughput, without one-time start-up costs.
        throughput = train_seed(0, args.throughput_steps, f"{tmp}/throughput")
    reached = [r for r in runs if r["reached"]]
    summary = {
        "env": ENV,
        "threshold": THRESHOLD,
        "budget_steps": args.total_steps,
        "eval_every": args.eval_every,
        "config": {k: v for k, v in ppo.ENV_DEFAULTS[ENV].items()},
        "seeds_reached": f"{len(reached)}/{len(runs)}",
        # A seed that misses counts as infinitely slow, so the median is over all seeds.
        "median_wall_s_to_threshold": statistics.median([r["wall_s"] if r["reached"] else float("inf") for r in runs]),
        "median_steps_to_threshold": statistics.median([r["steps"] if r["reached"] else float("inf") for r in runs]),
        "median_steps_per_s": statistics.median(r["steps_per_s"] for r in runs),
        "throughput_lstm64_steps_per_s": throughput["steps_per_s"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "threads": 1,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ppo_cartpole.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Recurrent PPO on {ENV}",
        "",
        f"Threshold: mean deterministic evaluation return >= {THRESHOLD:g} within {args.total_steps} steps "
        f"(evaluated every {args.eval_every} steps, evaluation time included in wall time).",
        f"Load average before/after: {summary['load_average_before']} / {summary['load_average_after']} (2-core machine).",
        "",
        "| seed | reached | steps | wall s to threshold | steps/s (training) |",
        "|---|---|---|---|---|",
        *[f"| {r['seed']} | {'yes' if r['reached'] else 'no'} | {r['steps']} | {r['wall_s'] if r['reached'] else '-'} | {r['steps_per_s']} |" for r in runs],
        "",
        f"Seeds reaching {THRESHOLD:g}: **{summary['seeds_reached']}**; median wall time to threshold "
        f"**{summary['median_wall_s_to_threshold']} s**; median steps {summary['median_steps_to_threshold']}; "
        f"median training steps/s {summary['median_steps_per_s']}.",
        "",
        f"Throughput, 64-unit LSTM, defaults, {args.throughput_steps} steps without evaluation, run last in the warm process: "
        f"**{throughput['steps_per_s']} env steps/s**.",
    ]
    (RESULTS / "ppo_cartpole.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
