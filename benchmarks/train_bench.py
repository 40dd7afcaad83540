"""Does memory solve the memory tasks? Train recurrent and feed-forward agents over seeds and evaluate.

For each (algorithm, environment, network, seed) it trains with the per-environment defaults,
evaluates 100 deterministic episodes of the best (checkpoint.pt) and of the final (last.pt) policy,
and records their success rates and returns, the wall time and environment steps/s. Results go to ``benchmarks/results/train_bench.json`` and ``.md``.

    python benchmarks/train_bench.py                       # the full matrix, 5 seeds (long)
    python benchmarks/train_bench.py --seeds 2 --algos drqn --envs rnnpolicy/TMaze-v0
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

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY_ENVS = ("rnnpolicy/TMaze-v0", "rnnpolicy/RepeatFirst-v0", "rnnpolicy/MemoryGrid-v0")


def run_one(algo: str, env: str, network: str, seed: int, out: Path) -> dict:
    from rnnpolicy.train.api import train
    from rnnpolicy.train.checkpoint import LAST_NAME
    from rnnpolicy.train.config import TrainConfig
    from rnnpolicy.train.evaluate import evaluate

    config = TrainConfig(algo=algo, env=env, out=str(out), seed=seed, feedforward=network == "ff", progress=False)
    start = time.perf_counter()
    checkpoint = train(config)
    wall = time.perf_counter() - start
    rows = (out / "metrics.csv").read_text().splitlines()
    steps = int(float(rows[-1].split(",")[0]))
    row = {
        "algo": algo, "env": env, "network": network, "seed": seed,
        "env_steps": steps, "wall_s": round(wall, 2), "steps_per_s": round(steps / wall, 1),
    }
    for key, path in (("best", checkpoint), ("final", out / LAST_NAME)):
        result = evaluate(path, episodes=100)
        row[f"{key}_return"], row[f"{key}_success_rate"] = result.mean_return, result.success_rate
    return row


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["algo"], row["env"], row["network"]), []).append(row)
    summary = []
    for (algo, env, network), runs in groups.items():
        entry: dict = {"algo": algo, "env": env, "network": network, "seeds": len(runs)}
        for key in ("best", "final"):
            success = [r[f"{key}_success_rate"] for r in runs if r[f"{key}_success_rate"] is not None]
            entry[f"{key}_median_success_rate"] = statistics.median(success) if success else None
            entry[f"{key}_min_success_rate"] = min(success) if success else None
            entry[f"{key}_seeds_at_0.95"] = sum(s >= 0.95 for s in success)
            entry[f"{key}_median_return"] = statistics.median(r[f"{key}_return"] for r in runs)
        entry["median_wall_s"] = statistics.median(r["wall_s"] for r in runs)
        entry["median_steps_per_s"] = statistics.median(r["steps_per_s"] for r in runs)
        summary.append(entry)
    return summary


def write_markdown(summary: list[dict], path: Path, command: str) -> None:
    lines = [
        "# Memory benchmark: recurrent vs feed-forward",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, one torch thread.",
        "",
        "Best: checkpoint.pt (the best evaluation during training); final: last.pt.",
        "",
        "| algo | env | network | seeds | median success best / final | min success best / final | seeds >= 0.95 best / final "
        "| median return best / final | median wall s | median steps/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    pair = lambda s, k: f"{fmt(s['best_' + k])} / {fmt(s['final_' + k])}"  # noqa: E731
    for s in summary:
        cells = [fmt(s[k]) for k in ("algo", "env", "network", "seeds")]
        cells += [pair(s, k) for k in ("median_success_rate", "min_success_rate", "seeds_at_0.95", "median_return")]
        cells += [fmt(s["median_wall_s"]), fmt(s["median_steps_per_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=["drqn", "ppo"], help="Algorithms. (default: drqn ppo)")
    parser.add_argument("--envs", nargs="+", default=list(MEMORY_ENVS), help="Environments. (default: the three memory tasks)")
    parser.add_argument("--networks", nargs="+", default=["lstm", "ff"], choices=["lstm", "ff"], help="Networks. (default: lstm ff)")
    parser.add_argument("--seeds", type=int, default=5, help="Seeds 1..N per cell. (default: 5)")
    parser.add_argument("--name", default="train_bench", help="Result file stem. (default: train_bench)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos:
            for env in args.envs:
                for network in args.networks:
                    for seed in range(1, args.seeds + 1):
                        out = Path(tmp) / f"{algo}-{env.replace('/', '_')}-{network}-{seed}"
                        row = run_one(algo, env, network, seed, out)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    summary = summarise(rows)
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/train_bench.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
    )
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"command": command, "summary": summary, "runs": rows}, indent=2))
    write_markdown(summary, RESULTS / f"{args.name}.md", command)
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
