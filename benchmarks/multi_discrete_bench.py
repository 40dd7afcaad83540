"""Recurrent PPO on a MultiDiscrete task with its defaults apart from the step budget, against a random policy.

For each seed it trains ``--env`` (default ``popgym:popgym-MineSweeperEasy-v0``, needs
``pip install -c constraints.txt -e '.[bench]'``) for ``--total-steps``, evaluates 100
deterministic episodes (``rnnpolicy eval``'s evaluation) and records the mean return and the
wall time; a uniformly random policy is evaluated on the same episode seeds. Results go to
``benchmarks/results/<name>.json`` and ``.md``.

    nice python benchmarks/multi_discrete_bench.py                  # 3 seeds, 100k steps each
    nice python benchmarks/multi_discrete_bench.py --seeds 1 --total-steps 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_SEED = 10_000  # rnnpolicy eval's default: episode i is reset with seed EVAL_SEED + i


def random_policy_return(env_id: str, episodes: int, action_seed: int = 0) -> float:
    """Mean return of uniformly random actions (drawn from ``action_seed``) over the evaluation's episode seeds."""
    from rnnpolicy.envs import make_env

    env = make_env(env_id)
    env.action_space.seed(action_seed)
    returns = []
    for i in range(episodes):
        env.reset(seed=EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def run_one(env: str, seed: int, total_steps: int, episodes: int, out: Path) -> dict:
    from rnnpolicy.train.api import train
    from rnnpolicy.train.checkpoint import load_checkpoint
    from rnnpolicy.train.config import TrainConfig
    from rnnpolicy.train.evaluate import evaluate

    config = TrainConfig(algo="ppo", env=env, out=str(out), seed=seed, total_steps=total_steps, progress=False)
    start = time.perf_counter()
    checkpoint = train(config)
    wall = time.perf_counter() - start
    rows = (out / "metrics.csv").read_text().splitlines()
    steps = int(float(rows[-1].split(",")[0]))
    result = evaluate(checkpoint, episodes=episodes)
    return {
        "env": env, "seed": seed, "action_space": load_checkpoint(checkpoint).spec.action.kind,
        "env_steps": steps, "wall_s": round(wall, 1), "steps_per_s": round(steps / wall, 1),
        "mean_return": round(result.mean_return, 4), "std_return": round(result.std_return, 4),
    }


def write_markdown(record: dict, path: Path) -> None:
    lines = [
        f"# Recurrent PPO on {record['env']} (defaults apart from the step budget)",
        "",
        f"Command: `{record['command']}`  ",
        f"Machine: {os.cpu_count()} cores shared with other jobs, {platform.machine()}, one torch thread.  ",
        f"Random policy (uniform actions, same {record['episodes']} episode seeds): mean return {record['random_return']:.3f}.",
        "",
        "| seed | env steps | wall s | steps/s | mean return (100 deterministic episodes) | vs random |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["runs"]:
        lines.append(f"| {r['seed']} | {r['env_steps']} | {r['wall_s']} | {r['steps_per_s']} | "
                     f"{r['mean_return']:.3f} +/- {r['std_return']:.3f} | {r['mean_return'] - record['random_return']:+.3f} |")
    lines += ["", f"Median return {record['median_return']:.3f}; seeds above the random policy: "
              f"{record['seeds_above_random']}/{len(record['runs'])}; median wall time {record['median_wall_s']} s."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="popgym:popgym-MineSweeperEasy-v0", help="Environment id. (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 1..N. (default: 3)")
    parser.add_argument("--total-steps", type=int, default=100_000, help="Steps per run. (default: 100000, the generic default)")
    parser.add_argument("--episodes", type=int, default=100, help="Evaluation episodes. (default: 100)")
    parser.add_argument("--name", default="multi_discrete_minesweeper", help="Result file stem. (default: %(default)s)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    random_return = random_policy_return(args.env, args.episodes)
    print(f"random policy: mean return {random_return:.3f}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, args.seeds + 1):
            row = run_one(args.env, seed, args.total_steps, args.episodes, Path(tmp) / str(seed))
            print(json.dumps(row), flush=True)
            runs.append(row)
    command = (f"nice python benchmarks/multi_discrete_bench.py --env {args.env} --seeds {args.seeds} "
               f"--total-steps {args.total_steps} --episodes {args.episodes}")
    record = {
        "command": command, "env": args.env, "episodes": args.episodes, "random_return": round(random_return, 4),
        "median_return": statistics.median(r["mean_return"] for r in runs),
        "seeds_above_random": sum(r["mean_return"] > random_return for r in runs),
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    write_markdown(record, RESULTS / f"{args.name}.md")
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
