"""Default training runs as a user makes them: best (checkpoint.pt) and final (last.pt) policy per seed.

Each seed runs ``rnnpolicy train --algo ALGO --env ENV --seed S --out DIR [EXTRA...]`` in a
subprocess (so the wall time is a user's, start-up included), then evaluates both files with
``evaluate(..., episodes=--episodes)`` on ``rnnpolicy eval``'s seeds (10000 on, apart from
the seeds of the evaluations during training). Results go to ``results/NAME.json`` and ``.md``.

    python benchmarks/default_runs_bench.py --name ppo_cartpole_default --env rnnpolicy/CartPoleNoVel-v0 --threshold 475
    python benchmarks/default_runs_bench.py --name popgym_repeat_previous_medium --env popgym:popgym-RepeatPreviousMedium-v0 \\
        --threshold 0.5 --seeds 1 2 3 -- --total-steps 5000000
    python benchmarks/default_runs_bench.py --name minigrid_memory_s11 --env minigrid:MiniGrid-MemoryS11-v0 \\
        --threshold 0.95 --metric success_rate --seeds 1 2 3 -- --wrapper minigrid.wrappers:ImgObsWrapper --total-steps 3000000
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RunConditions, describe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run_seed(args: argparse.Namespace, seed: int, out: Path) -> dict:
    from rnnpolicy.train.evaluate import evaluate

    command = [sys.executable, "-m", "rnnpolicy.cli", "train", "--algo", args.algo, "--env", args.env, "--seed", str(seed),
               "--out", str(out), "--no-progress", *args.extra]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"seed": seed, "error": f"timed out after {args.timeout:g} s (killed, no policy evaluated)", "wall_s": args.timeout}
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"seed": seed, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
                "wall_s": round(wall, 1)}
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    curve = [[int(float(r["step"])), round(float(r["eval_return"]), 4)] for r in rows if not math.isnan(float(r["eval_return"]))]
    evaluated = [value for _, value in curve]
    result = {
        "seed": seed,
        "wall_s": round(wall, 1),
        "train_wall_s": round(float(rows[-1]["wall_time"]), 1),
        "steps": int(float(rows[-1]["step"])),
        "stopped_early": "stopping early" in done.stderr,
        "evaluations": len(evaluated),
        "eval_time_s": round(float(rows[-1]["eval_time"]), 1),
        "steps_per_s": round(float(rows[-1]["steps_per_s"])),
        "best_eval_return_in_training": max(evaluated) if evaluated else None,
        "eval_curve": curve,  # [step, evaluation return during training]
    }
    for name, key in (("checkpoint.pt", "best"), ("last.pt", "final")):
        evaluation = evaluate(out / name, episodes=args.episodes)
        result[f"{key}_return"] = round(evaluation.mean_return, 4)
        success, derived = success_rate(evaluation) if args.metric == "success_rate" else (evaluation.success_rate, False)
        if derived:
            result["success_from"] = "return > 0 (the environment reports no is_success)"
        result[f"{key}_success_rate"] = success
    return result


def success_rate(evaluation) -> tuple[float, bool]:
    """The evaluation's success rate, and whether it was derived: where the environment reports no ``is_success``
    (MiniGrid, which pays a reward only on reaching the goal), the share of episodes with a positive return."""
    if evaluation.success_rate is not None:
        return evaluation.success_rate, False
    return sum(r > 0 for r in evaluation.returns) / len(evaluation.returns), True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="result file stem")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--env", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--threshold", type=float, required=True, help="target of the metric, per seed")
    parser.add_argument("--metric", choices=["return", "success_rate"], default="return")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per file (default 100)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per training run")
    parser.add_argument("--random-baseline", type=float, default=None, help="a random policy's mean return, for the report")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write each seed's run directory to KEEP/seedS and keep it (default: a temporary directory)")
    parser.add_argument("extra", nargs="*", help="after --: more `rnnpolicy train` options")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    conditions = RunConditions()
    runs = []
    if args.keep is not None:
        taken = [args.keep / f"seed{seed}" for seed in args.seeds if (args.keep / f"seed{seed}").exists()]
        if taken:
            parser.error(f"--keep {args.keep}: {', '.join(map(str, taken))} already exist(s); choose a new folder")
    with contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            runs.append(run_seed(args, seed, Path(root) / f"seed{seed}"))
            print(json.dumps(runs[-1]), flush=True)
    ok = [r for r in runs if "error" not in r]

    def value(run: dict, key: str) -> float:
        v = run[f"{key}_{args.metric}"]
        return -math.inf if v is None else v

    best_met = sum(value(r, "best") >= args.threshold for r in ok)
    final_met = sum(value(r, "final") >= args.threshold for r in ok)
    command = "python benchmarks/default_runs_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = {
        "command": command,
        "train_command": f"rnnpolicy train --algo {args.algo} --env {args.env} --seed S --out DIR " + " ".join(args.extra),
        "metric": args.metric,
        "threshold": args.threshold,
        "episodes": args.episodes,
        "seeds": len(runs),
        "best_meets_threshold": f"{best_met}/{len(runs)}",
        "final_meets_threshold": f"{final_met}/{len(runs)}",
        "median_wall_s": statistics.median(r["wall_s"] for r in runs) if runs else None,
        "median_steps_per_s": statistics.median(r["steps_per_s"] for r in ok) if ok else None,
        "random_baseline_return": args.random_baseline,
        **conditions.finish(),
        "torch": torch.__version__,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    metric = "mean return" if args.metric == "return" else "success rate"
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [
        f"# Default runs: {args.algo} on {args.env}",
        "",
        f"Command: `{command}`  ",
        f"Each seed: `{summary['train_command']}`; then {args.episodes} evaluation episodes of checkpoint.pt (best) and last.pt (final).  ",
        describe(summary),
        "",
        f"| seed | steps | stopped early | wall s | steps/s | best {metric} | final {metric} | best return | final return |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['seed']} | error: {r['error']} | | {r['wall_s']} | | | | | |")
            continue
        lines.append(
            f"| {r['seed']} | {r['steps']} | {'yes' if r['stopped_early'] else 'no'} | {r['wall_s']} | {r['steps_per_s']} | "
            f"{fmt(r[f'best_{args.metric}'])} | {fmt(r[f'final_{args.metric}'])} | {fmt(r['best_return'])} | {fmt(r['final_return'])} |"
        )
    lines += [
        "",
        f"{metric} >= {args.threshold:g}: best (checkpoint.pt) on **{summary['best_meets_threshold']}** seeds, "
        f"final (last.pt) on **{summary['final_meets_threshold']}**; median wall time **{fmt(summary['median_wall_s'])} s** "
        f"(a subprocess each, start-up included); median training steps/s {fmt(summary['median_steps_per_s'])}.",
    ]
    if args.random_baseline is not None:
        lines.append(f"A random policy's mean return: {args.random_baseline:g}.")
    if any("success_from" in r for r in runs):
        lines.append("Success: an episode with a positive return (the environment reports no `is_success`).")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
