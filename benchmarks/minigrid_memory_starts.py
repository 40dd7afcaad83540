"""Where a MiniGrid Memory policy succeeds: success rate by the agent's start column, greedy and sampled.

``MemoryEnv`` starts the agent at a random column of the start room and hallway, facing east; only
from column 1 is the cue in view at the first step. The correct side at the end depends on both the
cue and which object lies up or down (each random), so a policy that ignores the cue succeeds in half
the episodes from every column. This separates "does not use the cue even when it sees it at once"
from "does not turn back to look at it": each row also gives the share of sampled episodes that ever faced
west and the share that ever had the cue in view (from columns 2-4 a look north is enough). Results go to
``results/NAME.json`` and ``.md``.

    python benchmarks/minigrid_memory_starts.py RUN/last.pt --name minigrid_memory_s7_starts --episodes 400
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
WEST = 2  # MiniGrid's agent_dir: 0 east, 1 south, 2 west, 3 north


@torch.no_grad()
def episodes_by_start(checkpoint: Path, episodes: int, sampled: bool, seed: int) -> dict[int, dict[str, float]]:
    """Per start column: episodes, success rate (positive return) and the shares that ever faced west and ever saw the cue."""
    from rnnpolicy.envs import make_env
    from rnnpolicy.train.checkpoint import load_checkpoint
    from rnnpolicy.train.models import initial_state

    loaded = load_checkpoint(checkpoint)
    model, spec = loaded.build(), loaded.spec
    env = make_env(spec.env_id, spec.env_wrappers)
    logits_at, action_at = spec.output_names.index("logits"), spec.output_names.index("action")
    generator = torch.Generator().manual_seed(seed)
    successes: dict[int, list[bool]] = defaultdict(list)
    faced_west: dict[int, list[bool]] = defaultdict(list)
    saw_cue: dict[int, list[bool]] = defaultdict(list)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        grid = env.unwrapped
        start_column = int(grid.agent_pos[0])
        cue = (1, grid.height // 2 - 1)  # MemoryEnv puts the cue object here
        seen = grid.agent_sees(*cue)
        state, episode_start = initial_state(spec, 1), torch.ones(1)
        total, turned, done = 0.0, False, False
        while not done:
            x = torch.as_tensor(spec.obs_encoding.encode_batch(obs[None]))  # (1, obs_dim)
            outputs, state = model.step(x, state, episode_start, cell_math=True)
            episode_start = torch.zeros(1)
            if sampled:
                action = int(torch.multinomial(torch.softmax(outputs[logits_at][0], -1), 1, generator=generator))
            else:
                action = int(outputs[action_at][0])
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            turned |= int(grid.agent_dir) == WEST
            seen |= grid.agent_sees(*cue)
            done = terminated or truncated
        successes[start_column].append(total > 0)
        faced_west[start_column].append(turned)
        saw_cue[start_column].append(seen)
    env.close()
    return {column: {"episodes": len(successes[column]), "success_rate": round(float(np.mean(successes[column])), 3),
                     "faced_west": round(float(np.mean(faced_west[column])), 3),
                     "saw_cue": round(float(np.mean(saw_cue[column])), 3)} for column in sorted(successes)}


def trained_with(checkpoint: Path) -> str:
    """The training run's configuration, as the checkpoint records it."""
    from rnnpolicy.train.checkpoint import load_checkpoint

    train = load_checkpoint(checkpoint).config.get("train", {})
    keys = ("algo", "env", "seed", "total_steps", "wrapper", "hidden_size", "image_scale", "image_codes")
    return ", ".join(f"{key} {train[key]}" for key in keys if key in train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt or last.pt of a MiniGrid Memory run")
    parser.add_argument("--name", required=True, help="result file stem")
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=50_000, help="seed of the first episode (default 50000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "command": shlex.join(["python", "benchmarks/minigrid_memory_starts.py", *sys.argv[1:]]),
        "checkpoint": str(args.checkpoint),
        "trained_with": trained_with(args.checkpoint),
        "greedy": episodes_by_start(args.checkpoint, args.episodes, sampled=False, seed=args.seed),
        "sampled": episodes_by_start(args.checkpoint, args.episodes, sampled=True, seed=args.seed),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Success by start column: {args.checkpoint}", "", f"Command: `{result['command']}`  ", f"Trained with: {result['trained_with']}.", "",
             "| start column | episodes | greedy success | sampled success | sampled: faced west | sampled: saw the cue |",
             "|---|---|---|---|---|---|"]
    for column, greedy in result["greedy"].items():
        sampled = result["sampled"][column]
        lines.append(f"| {column} | {greedy['episodes']} | {greedy['success_rate']:.2f} | {sampled['success_rate']:.2f} | {sampled['faced_west']:.2f} | {sampled['saw_cue']:.2f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
