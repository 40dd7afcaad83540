"""Recurrent PPO's generic defaults (ids without an entry) against alternatives, over several unfamiliar tasks.

For every task, configuration and seed: ``rnnpolicy train --algo ppo --env TASK --seed S
--total-steps N --out DIR [CONFIG OPTIONS...]`` in a subprocess (see ``default_runs_bench.run_seed``),
then the best (checkpoint.pt) and final (last.pt) policy each evaluated on ``--episodes`` held-out
episodes. A uniformly random policy's mean return on the same episode seeds is the floor of each
task. The figure per task and configuration is the mean over seeds; the summary row is the mean
normalised score ``(return - random) / (best known - random)`` over tasks, where "best known" is
the highest mean return any configuration reached on that task in this run. Writes
``results/NAME.json`` and ``.md`` (``--name``, default ``generic_defaults``).

    python benchmarks/generic_defaults_bench.py
    python benchmarks/generic_defaults_bench.py --tasks popgym:popgym-CountRecallEasy-v0 --seeds 1 --total-steps 50000
    python benchmarks/generic_defaults_bench.py --configs defaults "memory settings (64-step rollouts, 2 minibatches, 8 epochs, lr 3e-3)" --name generic_defaults_memory
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_runs_bench import run_seed  # noqa: E402
from machine import RunConditions, describe  # noqa: E402
from multi_discrete_bench import EVAL_SEED, random_policy_return  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = [
    "popgym:popgym-RepeatPreviousEasy-v0",  # name the suit seen 4 steps earlier
    "popgym:popgym-CountRecallEasy-v0",  # 27 actions: how many of the shown card were seen so far
    "popgym:popgym-PositionOnlyCartPoleEasy-v0",  # CartPole without velocities (popgym's)
    "popgym:popgym-HigherLowerEasy-v0",  # guess whether the next card is higher
    "Acrobot-v1",  # fully observed, sparse reward until swung up
]
CONFIGS: dict[str, list[str]] = {
    "defaults": [],
    "previous defaults (8 x 64, 16-step BPTT, no entropy bonus)": ["--rollout-steps", "64", "--seq-len", "16", "--ent-coef", "0"],
    "defaults without the entropy bonus": ["--ent-coef", "0"],
    "memory settings (64-step rollouts, 2 minibatches, 8 epochs, lr 3e-3)": [
        "--rollout-steps", "64", "--num-minibatches", "2", "--update-epochs", "8", "--learning-rate", "3e-3"],
    "defaults with 8 epochs of 2 minibatches": ["--num-minibatches", "2", "--update-epochs", "8"],
    "defaults with lr 3e-3": ["--learning-rate", "3e-3"],
    "defaults with forget-gate bias 3": ["--forget-bias", "3"],
}


def score(results: dict[str, dict]) -> dict[str, float | None]:
    """Fill each task's ``best_known_return`` and each configuration's mean best/final return and final score;
    returns the mean final score of each configuration over the tasks (None where a run failed everywhere)."""

    def mean_of(runs: list[dict], key: str) -> float | None:
        values = [r[key] for r in runs if "error" not in r]
        return statistics.fmean(values) if values and len(values) == len(runs) else None

    scores: dict[str, list[float]] = {}
    for entry in results.values():
        for config in entry["configs"].values():
            config["mean_best_return"] = mean_of(config["runs"], "best_return")
            config["mean_final_return"] = mean_of(config["runs"], "final_return")
        reached = [c["mean_best_return"] for c in entry["configs"].values() if c["mean_best_return"] is not None]
        top, floor = max(reached, default=entry["random_return"]), entry["random_return"]
        entry["best_known_return"] = top
        for name, config in entry["configs"].items():
            final = config["mean_final_return"]
            config["final_score"] = None if final is None or top <= floor else round((final - floor) / (top - floor), 3)
            scores.setdefault(name, [])
            if config["final_score"] is not None:
                scores[name].append(config["final_score"])
    return {name: round(statistics.fmean(s), 3) if s else None for name, s in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS)[:3], choices=list(CONFIGS), metavar="CONFIG",
                        help="configurations by name (default: the first three)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per file (default 50)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per training run")
    parser.add_argument("--name", default="generic_defaults", help="results file stem (default generic_defaults)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    conditions = RunConditions()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            floor = random_policy_return(task, args.episodes, action_seed=EVAL_SEED)
            results[task] = {"random_return": round(floor, 4), "configs": {}}
            for name in args.configs:
                run_args = argparse.Namespace(algo="ppo", env=task, timeout=args.timeout, episodes=args.episodes, metric="return",
                                              extra=["--total-steps", str(args.total_steps), *CONFIGS[name]])
                runs = [run_seed(run_args, seed, Path(tmp) / f"{len(results)}-{name[:8]}-{seed}") for seed in args.seeds]
                results[task]["configs"][name] = {"options": CONFIGS[name], "runs": runs}
                print(json.dumps({"task": task, "config": name, "runs": runs}), flush=True)

    scores = score(results)
    command = shlex.join(["python", "benchmarks/generic_defaults_bench.py", *sys.argv[1:]])
    summary = {
        "command": command,
        "total_steps": args.total_steps,
        "seeds": args.seeds,
        "episodes": args.episodes,
        "mean_final_score": scores,
        **conditions.finish(),
        "torch": torch.__version__,
        "tasks": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "# Recurrent PPO's generic defaults over unfamiliar tasks",
        "",
        f"Command: `{summary['command']}`  ",
        f"Each run: `rnnpolicy train --algo ppo --env TASK --seed S --total-steps {args.total_steps} --out DIR [OPTIONS]`, "
        f"seeds {', '.join(map(str, args.seeds))}; best (checkpoint.pt) and final (last.pt) policy each evaluated on "
        f"{args.episodes} held-out episodes; returns are means over seeds.  ",
        describe(summary),
        "",
        "| task | random policy | configuration | best return | final return | final score | median steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, entry in results.items():
        for name, config in entry["configs"].items():
            ok = [r["steps_per_s"] for r in config["runs"] if "error" not in r]
            errors = [f"seed {r['seed']}: {r['error']}" for r in config["runs"] if "error" in r]
            speed = str(round(statistics.median(ok))) if ok else "-"
            lines.append(f"| {task} | {entry['random_return']:.3f} | {name} | {fmt(config['mean_best_return'])} | "
                         f"{fmt(config['mean_final_return'])} | {fmt(config['final_score'])} | {speed}"
                         + (f" ({'; '.join(errors)})" if errors else "") + " |")
    lines += [
        "",
        "Final score: the final policy's return between the random policy's (0) and the best any configuration reached "
        "on that task in this run (1). Mean final score over tasks: "
        + ", ".join(f"{name} **{fmt(score)}**" for name, score in summary["mean_final_score"].items()) + ".",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
