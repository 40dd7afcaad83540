"""Training throughput on an environment whose step costs 1 ms of CPU: sync, --vector-env async, two torchrun ranks.

Every configuration trains recurrent PPO on ``rnnpolicy/SlowCartPoleNoVel-v0`` (CartPoleNoVel
burning 1 ms of CPU per step) for the same number of steps, evaluation off, one after another in
the same benchmark run; the figure is the training steps/s the run logs (``metrics.csv``), and
the wall time of the whole command. Writes ``results/vector_env.json`` and ``.md``.

    python benchmarks/vector_env_bench.py
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RunConditions, describe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "rnnpolicy/SlowCartPoleNoVel-v0"


def configurations(num_envs: list[int]) -> list[tuple[str, list[str], list[str]]]:
    """(name, launcher prefix, extra train options) of each configuration."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rnnpolicy.cli"]
    plain = [sys.executable, "-m", "rnnpolicy.cli"]
    out = []
    for n in num_envs:
        out.append((f"sync, {n} envs (default)", plain, ["--num-envs", str(n)]))
        out.append((f"async, {n} envs ({n} worker processes)", plain, ["--num-envs", str(n), "--vector-env", "async"]))
    out.append((f"torchrun 2 ranks, {max(num_envs)} envs (sync, {max(num_envs) // 2} per rank)", torchrun,
                ["--num-envs", str(max(num_envs))]))
    return out


def run(prefix: list[str], options: list[str], steps: int, out: Path) -> dict:
    command = [*prefix, "train", "--algo", "ppo", "--env", ENV, "--total-steps", str(steps), "--eval-every", "0",
               "--out", str(out), "--no-progress", *options]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-2000:]}")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    launcher = "torchrun --standalone --nproc-per-node 2 -m rnnpolicy.cli" if "torch.distributed.run" in command else "rnnpolicy"
    return {"command": f"{launcher} {shlex.join(command[command.index('train'):])}",
            "steps": int(float(rows[-1]["step"])), "steps_per_s": round(float(rows[-1]["steps_per_s"])), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-steps", type=int, default=8192)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[2, 16])
    args = parser.parse_args()
    conditions = RunConditions()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, prefix, options) in enumerate(configurations(args.num_envs)):
            results.append({"name": name, **run(prefix, options, args.total_steps, Path(tmp) / str(i))})
            print(json.dumps(results[-1]), flush=True)
    summary = {"env": ENV, "total_steps": args.total_steps, **conditions.finish(), "runs": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vector_env.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Training throughput on {ENV} (1 ms of CPU per step)",
        "",
        f"Command: `python benchmarks/vector_env_bench.py --total-steps {args.total_steps} --num-envs {' '.join(map(str, args.num_envs))}`  ",
        f"Recurrent PPO, the environment's defaults apart from --num-envs, evaluation off, {args.total_steps} steps each, "
        f"run one after another. {describe(summary)}",
        "",
        "| configuration | training steps/s | wall s (command) |",
        "|---|---|---|",
        *[f"| {r['name']} | {r['steps_per_s']} | {r['wall_s']} |" for r in results],
    ]
    by_envs: dict[str, dict[str, int]] = {}
    for r in results:
        kind, envs = r["name"].split(", ")[0], r["name"].split(", ")[1].split(" ")[0]
        by_envs.setdefault(envs, {})[kind] = r["steps_per_s"]
    lines.append("")
    for envs, figures in by_envs.items():
        if "sync" in figures and "async" in figures:
            lines.append(f"async / sync at {envs} environments: **{figures['async'] / figures['sync']:.2f}x**.")
    (RESULTS / "vector_env.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
