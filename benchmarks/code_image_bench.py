"""Reading a MiniGrid code image one-hot (the default) against reading its codes as numbers.

The task is MiniGrid Memory's comparison, without the walking: the observation is the first view
of ``MiniGrid-MemoryS7-v0`` from its start column 1, where the cue (a key or a ball, object codes 5
and 6) and both objects at the end of the hallway are in view at once; the agent answers 0 when
the upper object matches the cue, 1 when the lower one does, and is paid 1 for the right answer.
``--delay N`` shows N blank views between the image and the answer, so the answer must be held.

For each reading and seed: ``rnnpolicy train --algo ppo --env rnnpolicy-bench/CueMatch-v0
--seed S --total-steps N`` in this process (``--image-codes 0`` for numbers), then the best
(checkpoint.pt) and final (last.pt) policies each evaluated on ``--episodes`` held-out episodes.
Writes ``results/code_image.json`` and ``.md``.

    python benchmarks/code_image_bench.py
    python benchmarks/code_image_bench.py --seeds 1 --total-steps 20000
    python benchmarks/code_image_bench.py --delay 4 --readings one-hot -- --learning-rate 3e-3

Options after ``--`` go to every ``rnnpolicy train`` run. Since the one-hot reading makes the image
one of codes, a one-hot run without them takes recurrent PPO's defaults for images of codes (a GRU,
64-step rollouts, 2 minibatches, 8 epochs, lr 3e-3) while ``--image-codes 0`` takes the generic
defaults: give the hyperparameters after ``--`` to compare the readings alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RunConditions, describe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
READINGS: dict[str, tuple[str, int | None]] = {  # --readings name -> (report label, --image-codes)
    "one-hot": ("codes one-hot (default)", None),
    "numbers": ("codes as numbers (--image-codes 0)", 0),
}
SOLVED = 0.95


class CueMatchEnv(gym.Env):
    """MiniGrid-MemoryS7-v0's first view from column 1; action 0: the upper object matches the cue, 1: the lower."""

    observation_space = spaces.Box(0, 255, (7, 7, 3), np.uint8)
    action_space = spaces.Discrete(2)

    def __init__(self, delay: int = 0) -> None:
        import minigrid  # noqa: F401  (registers MiniGrid-MemoryS7-v0)

        self.memory = gym.make("MiniGrid-MemoryS7-v0").unwrapped
        self.delay = delay

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        memory = self.memory
        memory.reset(seed=int(self.np_random.integers(2**31)))
        memory.agent_pos = np.array((1, memory.height // 2))
        memory.agent_dir = 0
        self._upper = bool(memory.success_pos[1] < memory.height // 2)
        self._t = 0
        image = memory.gen_obs()["image"]  # (7, 7, 3): the view's column, row, then object, colour, state codes
        cue, upper = image[2, 6, 0], image[1, 2, 0]  # left of the agent; four ahead, left of the hallway
        if (cue == upper) != self._upper or {int(cue), int(upper)} - {5, 6}:
            raise RuntimeError(f"MiniGrid's Memory layout changed: cue {cue}, upper object {upper}, success above: {self._upper}")
        return image, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        blank = np.zeros((7, 7, 3), np.uint8)
        if self._t < self.delay:
            self._t += 1
            return blank, 0.0, False, False, {}
        right = (int(action) == 0) == self._upper
        return blank, float(right), True, False, {"is_success": right}


def first_solved_step(metrics: Path) -> int | None:
    """The first step whose evaluation during training reached :data:`SOLVED`, from a run's metrics.csv."""
    with metrics.open() as f:
        for row in csv.DictReader(f):
            value = float(row["eval_return"])
            if not math.isnan(value) and value >= SOLVED:
                return int(row["step"])
    return None


def steps_run(metrics: Path) -> int:
    """The environment steps a run took (whole updates, so up to one update fewer than asked), from its metrics.csv."""
    with metrics.open() as f:
        return max(int(row["step"]) for row in csv.DictReader(f))


def run(env_id: str, image_codes: int | None, seed: int, total_steps: int, episodes: int, out: Path, extra: list[str]) -> dict:
    """``rnnpolicy train`` in this process (the environment is registered here), then both files evaluated."""
    from rnnpolicy.train.checkpoint import CHECKPOINT_NAME, LAST_NAME
    from rnnpolicy.train.cli import add_train_arguments, run_train
    from rnnpolicy.train.evaluate import evaluate

    argv = ["--algo", "ppo", "--env", env_id, "--seed", str(seed), "--total-steps", str(total_steps), "--out", str(out),
            "--no-progress", *(["--image-codes", str(image_codes)] if image_codes is not None else []), *extra]
    parser = argparse.ArgumentParser()
    add_train_arguments(parser, argv)
    start = time.perf_counter()
    run_train(parser.parse_args(argv))
    wall = time.perf_counter() - start
    path = out / CHECKPOINT_NAME
    best, final = evaluate(path, episodes=episodes), evaluate(path.with_name(LAST_NAME), episodes=episodes)
    return {"seed": seed, "wall_s": round(wall, 1), "steps_per_s": round(steps_run(out / "metrics.csv") / wall),
            "best_return": round(best.mean_return, 3), "final_return": round(final.mean_return, 3),
            "first_solved_step": first_solved_step(out / "metrics.csv")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--delay", type=int, default=0, help="blank views between the image and the answer (default 0)")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per file (default 100)")
    parser.add_argument("--name", default="code_image", help="results file stem (default code_image)")
    parser.add_argument("--readings", nargs="+", choices=list(READINGS), default=list(READINGS),
                        help="how the image is read (default: both)")
    parser.add_argument("extra", nargs="*", help="after --: more `rnnpolicy train` options")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    env_id = f"rnnpolicy-bench/CueMatchDelay{args.delay}-v0"
    gym.register(id=env_id, entry_point=CueMatchEnv, kwargs={"delay": args.delay})
    conditions = RunConditions()
    readings: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.readings:
            name, codes = READINGS[key]
            readings[name] = []
            for seed in args.seeds:
                result = run(env_id, codes, seed, args.total_steps, args.episodes, Path(tmp) / f"{key}-{seed}", args.extra)
                readings[name].append(result)
                print(json.dumps({"reading": name, **result}), flush=True)

    command = shlex.join(["python", "benchmarks/code_image_bench.py", *sys.argv[1:]])
    summary = {"command": command, "env": env_id, "delay": args.delay, "total_steps": args.total_steps, "seeds": args.seeds,
               "train_options": args.extra,
               "episodes": args.episodes, **conditions.finish(), "torch": torch.__version__, "readings": readings}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# MiniGrid's code image: " + " against ".join(READINGS[key][0] for key in args.readings),
        "",
        f"Command: `{command}`  ",
        f"Each run: `rnnpolicy train --algo ppo --env {env_id} --seed S --total-steps {args.total_steps}"
        + (f" {' '.join(args.extra)}` " if args.extra else "` on the defaults ")
        + "(MiniGrid-MemoryS7-v0's first view from column 1, answer which side matches the cue"
        + (f", after {args.delay} blank views" if args.delay else "") + "; a random answer earns 0.5); "
        f"best (checkpoint.pt) and final (last.pt) policies each evaluated on {args.episodes} held-out episodes.  ",
        describe(summary),
        "",
        f"| reading | seed | best return | final return | first evaluation >= {SOLVED} at step | wall s | steps/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in readings.items():
        for r in runs:
            lines.append(f"| {name} | {r['seed']} | {r['best_return']:.3f} | {r['final_return']:.3f} | "
                         f"{r['first_solved_step'] or 'never'} | {r['wall_s']} | {r['steps_per_s']} |")
    lines.append("")
    for name, runs in readings.items():
        solved = sum(r["final_return"] >= SOLVED for r in runs)
        lines.append(f"- {name}: final policy >= {SOLVED} on {solved}/{len(runs)} seeds, median final return "
                     f"{statistics.median(r['final_return'] for r in runs):.3f}")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
