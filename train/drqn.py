"""Recurrent Q-learning: DRQN trained the R2D2 way.

Vector envs act epsilon-greedily with the online :class:`~rnnpolicy.train.models.QNetwork`;
their steps are cut into fixed-length sequences that never cross an episode's end, each
with the recurrent state the actor had at its first step (R2D2's stored state), see
:mod:`rnnpolicy.train.replay`. A gradient step replays a batch of sequences from their
stored states: the first ``burn_in`` steps only refresh the (stale) state and get neither
loss nor gradient, the rest regress onto n-step double-Q targets from a target network.
Sequences that start with their episode begin from the exact zero state, so they skip the
burn-in: the steps that matter most for memory (the first ones) are learned from too.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnpolicy.spec import PolicySpec
from rnnpolicy.train.api import resolve_device
from rnnpolicy.train.checkpoint import load_initial_weights
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.envs import action_spec, make_vector_env, observation_encoding, run_image_spec
from rnnpolicy.train.models import QNetwork, RecurrentState, init_forget_bias, initial_state
from rnnpolicy.train.optim import FusedAdam
from rnnpolicy.train.replay import SequenceBatch, SequenceCollector, SequenceReplay
from rnnpolicy.train.periodic_eval import TrainingEvaluator
from rnnpolicy.train.runlog import EpisodeTracker, RunLog

__all__ = ["CODE_IMAGE_DEFAULTS", "DATA_PARALLEL", "Config", "ENV_DEFAULTS", "epsilon_at", "learn", "n_step_targets", "sequence_q_values", "td_loss"]


DATA_PARALLEL = False
"""DRQN trains in one process: its replay buffer and target network are not shared across ranks."""


@dataclass
class Config:
    """DRQN hyperparameters."""

    num_envs: int = 8
    """Environments stepped side by side while collecting."""
    buffer_size: int = 5_000
    """Replay capacity in sequences (each up to seq_len steps)."""
    seq_len: int = 20
    """Steps per replayed sequence, burn-in included."""
    burn_in: int = 5
    """Leading steps of a replayed sequence that only refresh the stored state (no loss, no gradient)."""
    batch_size: int = 32
    """Sequences per gradient step."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over total_steps, so that late updates stop flipping the greedy action where the Q-values of the actions lie close."""
    gamma: float = 0.99
    """Discount factor."""
    n_step: int = 3
    """Rewards summed before bootstrapping (fewer at an episode's or a sequence's end)."""
    target_update_interval: int = 1_000
    """Gradient steps between target-network updates: a slow target keeps the Q-values from running away once a task is solved (popgym RepeatPreviousEasy: 200 let the final policy fall back to 0.57-0.83)."""
    tau: float = 1.0
    """Target update rate: 1 copies the online network (hard update), less blends it in (Polyak)."""
    learning_starts: int = 2_000
    """Environment steps collected before the first gradient step."""
    train_every: int = 1
    """Vector-env steps (num_envs environment steps each) between training phases."""
    gradient_steps: int = 1
    """Gradient steps per training phase."""
    epsilon_start: float = 1.0
    """Exploration rate at the start."""
    epsilon_end: float = 0.05
    """Exploration rate after the decay."""
    epsilon_fraction: float = 0.3
    """Fraction of total_steps over which epsilon decays linearly from start to end."""
    double_q: bool = True
    """Pick the bootstrap action with the online network and value it with the target network."""
    max_grad_norm: float = 10.0
    """Gradient clipping norm."""
    forget_bias: float = 1.0
    """Initial LSTM forget-gate bias: 1 keeps memories from fading in the first updates (Jozefowicz et al., 2015)."""
    log_interval: int = 1_000
    """Environment steps between metrics rows."""

    def __post_init__(self) -> None:
        for name in ("num_envs", "buffer_size", "seq_len", "batch_size", "n_step", "target_update_interval", "train_every", "gradient_steps", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.burn_in < self.seq_len:
            raise ValueError(f"burn_in must be in [0, seq_len={self.seq_len}), got {self.burn_in}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        for name in ("learning_rate", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "tau", "epsilon_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.epsilon_end <= self.epsilon_start <= 1:
            raise ValueError(f"need 0 <= epsilon_end <= epsilon_start <= 1, got epsilon_end={self.epsilon_end}, epsilon_start={self.epsilon_start}")

    def planned_steps(self, total_steps: int) -> int:
        """The environment steps a run of ``total_steps`` takes: ``num_envs`` at a time, rounded up."""
        return -(-total_steps // self.num_envs) * self.num_envs

    @property
    def step_rounding(self) -> str:
        """Why :meth:`planned_steps` may differ from the steps asked for, for the run's first line."""
        return f"{self.num_envs} environments step together"

    @property
    def stride(self) -> int:
        """Steps between consecutive sequences' starts: half a sequence (as R2D2), at most the part after burn-in."""
        return max(1, min(self.seq_len // 2, self.seq_len - self.burn_in))


# Each solves its task (deterministic evaluation >= 0.95 success) with an LSTM in a few CPU minutes.
# The memory tasks' sequences hold whole episodes (T-maze: at most 30 steps), so every
# sequence starts from the exact zero state and the cue is learned from by backpropagation.
# Their 40k-step runs (5k gradient steps) update the target every 200 gradient steps.
_BUILTIN: dict[str, Any] = {"total_steps": 40_000, "hidden_size": 32, "target_update_interval": 200}
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "rnnpolicy/TMaze-v0": {**_BUILTIN, "seq_len": 32, "burn_in": 8},
    "rnnpolicy/MemoryGrid-v0": {**_BUILTIN, "seq_len": 16, "burn_in": 4},
    "rnnpolicy/RepeatFirst-v0": {**_BUILTIN, "seq_len": 10, "burn_in": 2},
}
# Images of codes without an entry take the generic defaults: no DRQN setting was measured on them.
CODE_IMAGE_DEFAULTS: dict[str, Any] = {}


def epsilon_at(step: int, total_steps: int, config: Config) -> float:
    """The linearly decayed exploration rate after ``step`` environment steps."""
    progress = min(1.0, step / (config.epsilon_fraction * total_steps))
    return config.epsilon_start + progress * (config.epsilon_end - config.epsilon_start)


def sequence_q_values(model: QNetwork, obs: Tensor, state: RecurrentState, burn_in: int, episode_first: Tensor) -> Tensor:
    """Q-values ``(T, B, A)`` of sequences ``obs`` ``(T, B, F)`` run from their stored ``state``.

    The state leaving the first ``burn_in`` steps is detached, so no gradient reaches the
    burn-in, except in rows whose sequence starts its episode (``episode_first`` ``(B,)``):
    their state is exact, and their first steps are learned from like any other.
    """
    no_reset = torch.zeros(obs.shape[:2], device=obs.device)  # (T, B): sequences never cross episodes
    if burn_in == 0:
        return model(obs, state, no_reset)[0]
    q_burn, state = model(obs[:burn_in], state, no_reset[:burn_in])  # (burn_in, B, A)
    keep = episode_first.float()  # (B,)
    state = RecurrentState(*(None if t is None else _keep_gradient(t, keep) for t in state))
    q_rest, _ = model(obs[burn_in:], state, no_reset[burn_in:])  # (T - burn_in, B, A)
    return torch.cat([q_burn, q_rest], dim=0)


def _keep_gradient(t: Tensor, keep: Tensor) -> Tensor:
    """``t`` ``(layers, B, H)`` with its gradient kept in rows where ``keep`` ``(B,)`` is 1, cut elsewhere."""
    keep = keep.view(1, -1, 1)
    return keep * t + (1.0 - keep) * t.detach()


def n_step_targets(rewards: Tensor, terminated: Tensor, mask: Tensor, bootstrap: Tensor, gamma: float, n_step: int) -> Tensor:
    """n-step targets ``(T, B)`` for every step of padded sequences.

    ``rewards``, ``terminated``, ``mask`` are ``(T, B)`` (real steps a prefix of each column,
    ``v`` of them); ``bootstrap`` ``(T + 1, B)`` is the value of each observation. Step ``t``
    sums ``m = min(n_step, v - t)`` rewards and adds ``gamma**m * bootstrap[t + m]`` unless
    the episode terminated within them: a truncated episode still bootstraps from its final
    observation, a terminated one does not. Padding steps get meaningless targets.
    """
    T = rewards.shape[0]
    padded = F.pad(rewards, (0, 0, 0, n_step))  # (T + n, B), zeros past the end
    returns = sum(gamma**k * padded[k : k + T] for k in range(n_step))  # (T, B)
    steps = torch.arange(T, device=rewards.device).unsqueeze(1)  # (T, 1)
    valid = mask.sum(dim=0, keepdim=True)  # (1, B)
    boot_at = torch.minimum(steps + n_step, valid)  # (T, B)
    summed = (boot_at - steps).clamp(min=0)  # (T, B): rewards summed, m
    ends_terminal = terminated.any(dim=0, keepdim=True) & (boot_at == valid)  # (T, B)
    discount = torch.where(ends_terminal, 0.0, gamma ** summed.float())  # (T, B)
    return returns + discount * bootstrap.gather(0, boot_at)


def td_loss(online: QNetwork, target: QNetwork, batch: SequenceBatch, config: Config) -> tuple[Tensor, Tensor]:
    """Huber loss between the online Q of the taken actions and their n-step targets; also their mean Q."""
    q_all = sequence_q_values(online, batch.obs, batch.state, config.burn_in, batch.episode_first)  # (T + 1, B, A)
    q_taken = q_all[:-1].gather(2, batch.actions.unsqueeze(-1)).squeeze(-1)  # (T, B)
    with torch.no_grad():
        no_reset = torch.zeros(batch.obs.shape[:2], device=batch.obs.device)  # (T + 1, B)
        q_target = target(batch.obs, batch.state, no_reset)[0]  # (T + 1, B, A)
        if config.double_q:
            greedy = q_all.detach().argmax(dim=-1, keepdim=True)  # (T + 1, B, 1)
            bootstrap = q_target.gather(2, greedy).squeeze(-1)  # (T + 1, B)
        else:
            bootstrap = q_target.max(dim=-1).values
        targets = n_step_targets(batch.rewards, batch.terminated, batch.mask, bootstrap, config.gamma, config.n_step)
    steps = torch.arange(q_taken.shape[0], device=q_taken.device).unsqueeze(1)  # (T, 1)
    learn_mask = (batch.mask & ((steps >= config.burn_in) | batch.episode_first)).float()  # (T, B)
    losses = F.smooth_l1_loss(q_taken, targets, reduction="none")  # (T, B)
    count = learn_mask.sum().clamp(min=1.0)
    return (losses * learn_mask).sum() / count, (q_taken.detach() * learn_mask).sum() / count


def _update_target(target: QNetwork, online: QNetwork, tau: float) -> None:
    """Copy (``tau == 1``) or blend the online weights into the target network."""
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            if tau == 1.0:
                t.copy_(o)
            else:
                t.lerp_(o, tau)


def learn(config: TrainConfig, algo_config: Config, run: RunLog, evaluator: TrainingEvaluator) -> tuple[PolicySpec, QNetwork]:
    """Train a recurrent Q-network on ``config.env`` for ``config.total_steps`` environment steps.

    One process only (``DATA_PARALLEL = False``): replay and the target network live here.
    """
    assert config.total_steps is not None and config.hidden_size is not None
    cfg = algo_config
    device = resolve_device(config.device)
    envs = make_vector_env(config.env, cfg.num_envs, config.seed, config.wrapper, config.vector_env)
    action = action_spec(envs)
    if not action.is_discrete:
        envs.close()
        raise ValueError(
            f"drqn needs a discrete action space, got {envs.single_action_space}; train this environment with --algo ppo"
        )
    spec = PolicySpec(
        kind="q",
        cell=config.cell_kind,
        lmu=config.lmu_spec,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        obs_encoding=observation_encoding(envs),
        action=action,
        env_id=config.env,
        env_wrappers=config.wrapper,
        algo="drqn",
        image=run_image_spec(envs, config),
    )
    torch.manual_seed(config.seed)
    online = QNetwork(spec)
    init_forget_bias(online, cfg.forget_bias)
    if config.init_from is not None:
        load_initial_weights(online, spec, config.init_from)
    online.to(device)
    target = copy.deepcopy(online).requires_grad_(False)
    optimizer = FusedAdam(online.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(config.seed)

    replay = SequenceReplay(
        cfg.buffer_size, cfg.seq_len, spec.obs_dim, tuple((s.layers, s.hidden) for s in spec.state_tensors)
    )
    collector = SequenceCollector(replay, cfg.num_envs, cfg.stride)
    tracker = EpisodeTracker(cfg.num_envs)

    raw_obs, _ = envs.reset(seed=config.seed)
    obs = spec.obs_encoding.encode_batch(raw_obs)  # (N, F)
    state = initial_state(spec, cfg.num_envs, device)
    episode_start = torch.ones(cfg.num_envs, device=device)
    step = iteration = updates = 0
    losses: list[float] = []
    q_means: list[float] = []
    start = time.perf_counter()
    next_log = cfg.log_interval
    snapshot = lambda: (spec, copy.deepcopy(online).cpu().eval())  # noqa: E731
    while step < config.total_steps:
        epsilon = epsilon_at(step, config.total_steps, cfg)
        state = state.masked(1.0 - episode_start)  # the state acted from, stored with the step
        with torch.no_grad():
            (_, greedy), next_state = online.step(torch.as_tensor(obs, device=device), state, episode_start, cell_math=True)
        explore = rng.random(cfg.num_envs) < epsilon
        actions = np.where(explore, rng.integers(action.n, size=cfg.num_envs), greedy.cpu().numpy())
        raw_next, rewards, terminated, truncated, infos = envs.step(actions)
        done = terminated | truncated
        next_obs = spec.obs_encoding.encode_batch(raw_next)  # (N, F): next episodes' first where done
        last_obs = next_obs.copy()
        if done.any():
            final = infos["final_obs"]
            for row in np.flatnonzero(done):
                last_obs[row] = spec.obs_encoding.encode(final[row])
        collector.add(obs, state, actions, rewards, terminated, truncated, last_obs)
        tracker.update(rewards, done, infos)
        obs, state = next_obs, next_state
        episode_start = torch.as_tensor(done, dtype=torch.float32, device=device)
        step += cfg.num_envs
        iteration += 1

        if step >= cfg.learning_starts and len(replay) >= cfg.batch_size and iteration % cfg.train_every == 0:
            if cfg.anneal_lr:
                optimizer.lr = cfg.learning_rate * max(0.0, 1.0 - step / config.total_steps)
            for _ in range(cfg.gradient_steps):
                loss, q_mean = td_loss(online, target, replay.sample(cfg.batch_size, rng, device), cfg)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(online.parameters(), cfg.max_grad_norm)
                optimizer.step()
                updates += 1
                if updates % cfg.target_update_interval == 0:
                    _update_target(target, online, cfg.tau)
                losses.append(loss.item())
                q_means.append(q_mean.item())

        # An evaluation is due by --eval-every alone; it gets a metrics row of its own between log rows.
        evaluated = evaluator.maybe_evaluate(step, snapshot, final=step >= config.total_steps) is not None
        if step >= next_log or step >= config.total_steps or evaluated:
            if step >= next_log:
                next_log += cfg.log_interval
            run.log(
                step,
                tracker,
                loss=float(np.mean(losses)) if losses else float("nan"),
                q_mean=float(np.mean(q_means)) if q_means else float("nan"),
                epsilon=epsilon,
                **evaluator.row(),
                steps_per_s=step / (time.perf_counter() - start - evaluator.eval_time),
            )
            losses.clear()
            q_means.clear()
            if evaluator.reached_target:
                run.note(evaluator.stop_note(step))
                break
    envs.close()
    return spec, online.cpu().eval()
