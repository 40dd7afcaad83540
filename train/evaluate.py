"""Evaluate a checkpoint: deterministic episodes, mean and std of the return, success rate where known."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium.vector.utils import concatenate, create_empty_array

from rnnpolicy.envs import check_fits, make_env
from rnnpolicy.train.checkpoint import load_checkpoint
from rnnpolicy.spec import PolicySpec
from rnnpolicy.train.models import ActorCritic, QNetwork, initial_state


@dataclass
class EvalResult:
    episodes: int
    mean_return: float
    std_return: float
    success_rate: float | None
    returns: list[float]

    def to_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "episodes": self.episodes,
            "mean_return": self.mean_return,
            "std_return": self.std_return,
        }
        if self.success_rate is not None:
            out["success_rate"] = self.success_rate
        return out

    def extended(self, more: EvalResult) -> EvalResult:
        """This evaluation with ``more`` episodes' results appended: means over all the episodes."""
        returns = self.returns + more.returns
        success_rate = None
        if self.success_rate is not None and more.success_rate is not None:
            success_rate = (self.success_rate * self.episodes + more.success_rate * more.episodes) / (self.episodes + more.episodes)
        return EvalResult(len(returns), float(np.mean(returns)), float(np.std(returns)), success_rate, returns)


@torch.no_grad()
def evaluate(
    checkpoint_path: str | Path,
    episodes: int = 100,
    seed: int = 10_000,
    env_id: str | None = None,
    batch: int = 16,
    wrappers: Sequence[str] | None = None,
) -> EvalResult:
    """Run ``episodes`` deterministic episodes, ``batch`` environments side by side, one model call per step.

    The environment is the checkpoint's (``env_id`` and its ``--wrapper`` list) unless given.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    env_id = env_id or checkpoint.spec.env_id
    if not env_id:
        raise ValueError("the checkpoint names no environment; pass one with --env")
    wrappers = checkpoint.spec.env_wrappers if wrappers is None else wrappers
    return evaluate_model(checkpoint.build(), checkpoint.spec, env_id, episodes=episodes, seed=seed, batch=batch, wrappers=wrappers)


@torch.no_grad()
def evaluate_model(
    model: QNetwork | ActorCritic,
    spec: PolicySpec,
    env_id: str,
    episodes: int = 100,
    seed: int = 10_000,
    batch: int = 16,
    wrappers: Sequence[str] = (),
) -> EvalResult:
    """:func:`evaluate` for a model in memory (a trainer's in-process evaluation)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    width = min(batch, episodes)
    envs = [make_env(env_id, wrappers) for _ in range(width)]
    try:
        check_fits(spec, envs[0], env_id, wrappers)
    except ValueError:
        for env in envs:
            env.close()
        raise
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    space = envs[0].observation_space
    batch_obs = create_empty_array(space, width)  # reused: the observations as a vector env batches them
    started = width
    state = initial_state(spec, width)
    episode_start = torch.ones(width)
    totals = np.zeros(width)
    active = np.ones(width, dtype=bool)
    returns: list[float] = []
    successes: list[float] = []
    while active.any():
        x = torch.as_tensor(spec.obs_encoding.encode_batch(concatenate(space, obs, batch_obs)))  # (B, obs_dim)
        outputs, state = model.step(x, state, episode_start, cell_math=True)
        actions = outputs[spec.output_names.index("action")].numpy()
        episode_start = torch.zeros(width)
        for i, env in enumerate(envs):
            if not active[i]:
                continue
            obs[i], reward, terminated, truncated, info = env.step(spec.action.to_env(actions[i]))
            totals[i] += reward
            if terminated or truncated:
                returns.append(float(totals[i]))
                if "is_success" in info:
                    successes.append(float(info["is_success"]))
                totals[i] = 0.0
                if started < episodes:
                    obs[i] = env.reset(seed=seed + started)[0]
                    started += 1
                    episode_start[i] = 1.0
                else:
                    active[i] = False
    for env in envs:
        env.close()
    return EvalResult(
        episodes=len(returns),
        mean_return=float(np.mean(returns)),
        std_return=float(np.std(returns)),
        success_rate=float(np.mean(successes)) if successes else None,
        returns=returns,
    )
