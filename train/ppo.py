"""Recurrent PPO: GAE, truncated BPTT over rollout chunks, minibatches of whole padded sequences.

Read top to bottom: ``Config``, ``ENV_DEFAULTS``, :func:`compute_gae`, then :func:`learn`, whose
loop is rollout -> advantages -> update epochs. The rollout steps every environment one step
per model call and stores the recurrent state at the start of each ``seq_len`` chunk. The
update cuts each chunk at episode starts (:mod:`rnnpolicy.train.sequences`), pads the pieces
to equal length and runs them through the recurrent core in one fused call per minibatch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from rnnpolicy.spec import ObsNormSpec, PolicySpec
from rnnpolicy.train.api import resolve_device
from rnnpolicy.train.checkpoint import load_initial_weights
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train import distributed
from rnnpolicy.train.distributed import DataParallel
from rnnpolicy.train.envs import action_spec, make_vector_env, observation_encoding, run_image_spec
from rnnpolicy.train.episode_carry import EpisodeCarry, Prefixes
from rnnpolicy.train.models import (
    ActorCritic,
    RecurrentState,
    factored_log_prob_entropy,
    factored_sample,
    init_forget_bias,
    initial_state,
)
from rnnpolicy.train.normalize import RunningMeanStd
from rnnpolicy.train.optim import FusedAdam
from rnnpolicy.train.periodic_eval import TrainingEvaluator
from rnnpolicy.train.runlog import EpisodeTracker, RunLog
from rnnpolicy.train.sequences import PaddedSequences, split_sequences, with_prefixes


DATA_PARALLEL = True
"""Runs data-parallel under torchrun (see :mod:`rnnpolicy.train.distributed`)."""


DEFAULT_MINIBATCHES = 4
"""Minibatches per epoch where neither the user nor the environment's entry sets them (fewer where a rollout holds fewer sequences)."""


@dataclass
class Config:
    """Recurrent PPO hyperparameters."""

    num_envs: int = 8
    """Environments stepped side by side (under torchrun: in all, split evenly across the ranks)."""
    rollout_steps: int = 128
    """Steps per environment between updates."""
    seq_len: int = 0
    """BPTT chunk length: the rollout is cut into chunks of this many steps, each starting from its stored state (0: the whole rollout, so gradients run back through whole episodes up to rollout_steps long)."""
    episode_bptt: bool = False
    """Backpropagate through whole episodes: an episode that began in an earlier rollout has its earlier steps (up to episode_bptt_max) replayed, loss-free, in front of its steps in this one, so the gradient crosses rollout boundaries (needs seq_len 0)."""
    episode_bptt_max: int = 1024
    """With episode_bptt: the most earlier steps replayed per episode (a longer episode's replay starts from a stored state)."""
    num_minibatches: int | None = None
    """Minibatches per epoch; each holds whole sequences (default: 4, or one per sequence where a rollout holds fewer: with seq_len 0, one per environment; under torchrun, per rank)."""
    update_epochs: int = 4
    """Passes over each rollout."""
    learning_rate: float = 1e-3
    """Adam step size."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over training."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_coef: float = 0.2
    """PPO ratio clipping."""
    ent_coef: float = 0.01
    """Entropy bonus weight: keeps the policy exploring until a signal is found."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient norm clipping."""
    reward_scale: float = 1.0
    """Multiply rewards by this before learning (returns are logged unscaled)."""
    forget_bias: float = 1.0
    """Initial LSTM forget-gate bias: 1 keeps the cue from fading before the first updates (other cells ignore it)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy (continuous actions only)."""
    shared_core: bool = True
    """Actor and critic share one recurrent core; False gives each its own (num_cores=2)."""
    normalize_obs: bool = False
    """Normalise observations by running statistics, stored in the spec so the exported graph does it too."""
    normalize_advantages: bool = True
    """Standardise advantages within each minibatch."""

    def __post_init__(self) -> None:
        for name in ("num_envs", "rollout_steps", "update_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 0 or (self.seq_len and self.rollout_steps % self.seq_len != 0):
            raise ValueError(f"seq_len must divide rollout_steps ({self.rollout_steps}) or be 0 (whole rollout), got {self.seq_len}")
        if self.num_minibatches is None:  # counted per rank: under torchrun each rank splits its own rollout
            ranks = distributed.launched_world_size()
            self.num_minibatches = max(1, min(DEFAULT_MINIBATCHES, self.sequences_per_rank(ranks)))
        if self.num_minibatches < 1:
            raise ValueError(f"num_minibatches must be >= 1, got {self.num_minibatches}")
        if self.episode_bptt and self.seq_len:
            raise ValueError(f"episode_bptt replays whole episodes, so it needs seq_len 0 (whole rollouts), got seq_len={self.seq_len}")
        if self.episode_bptt_max < 1:
            raise ValueError(f"episode_bptt_max must be >= 1, got {self.episode_bptt_max}")
        self.check_split(1)
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("learning_rate", "clip_coef", "max_grad_norm", "reward_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("ent_coef", "vf_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def planned_steps(self, total_steps: int) -> int:
        """The environment steps a run of ``total_steps`` takes: whole updates of ``num_envs * rollout_steps``, rounded down (at least one)."""
        per_update = self.num_envs * self.rollout_steps
        return max(1, total_steps // per_update) * per_update

    @property
    def step_rounding(self) -> str:
        """Why :meth:`planned_steps` may differ from the steps asked for, for the run's first line."""
        return f"whole updates of {self.num_envs} x {self.rollout_steps} steps"

    @property
    def chunk_len(self) -> int:
        """Steps per BPTT chunk: ``seq_len``, or the whole rollout when it is 0."""
        return self.seq_len or self.rollout_steps

    def sequences_per_rank(self, world_size: int) -> int:
        """BPTT sequences in one rank's share of a rollout: its environments times the chunks per environment."""
        return self.num_envs // world_size * (self.rollout_steps // self.chunk_len)

    def check_split(self, world_size: int) -> None:
        """``ValueError`` unless ``world_size`` ranks can share the environments, each filling every minibatch."""
        if self.num_envs % world_size:
            raise ValueError(f"num_envs must be a multiple of the {world_size} data-parallel ranks, got {self.num_envs}")
        sequences = self.sequences_per_rank(world_size)
        if self.num_minibatches > sequences:
            where = "per rollout" if world_size == 1 else f"per rank's rollout ({world_size} ranks)"
            envs = f"num_envs {self.num_envs}" + (f" / {world_size}" if world_size > 1 else "")
            count = (f"{envs} x rollout_steps {self.rollout_steps} / seq_len {self.seq_len}" if self.seq_len
                     else f"{envs}, one whole rollout each with seq_len 0")
            raise ValueError(f"num_minibatches must be at most the number of sequences {where} ({sequences}: {count}), "
                             f"got {self.num_minibatches}")

# The built-in tasks were tuned on these values (Config's defaults are for ids without an entry).
_BUILTIN: dict[str, Any] = dict(num_envs=8, rollout_steps=64, seq_len=16, learning_rate=1e-3, ent_coef=0.0)

# Memory tasks: BPTT over the whole rollout, so the gradient reaches the cue at each episode's start
# (with the LSTM forget-gate bias of 1, see Config.forget_bias). Training stops once a deterministic
# evaluation of 32 episodes is solved (return 1, or 0.95 on MemoryGrid, whose steps cost 0.01), so a
# run takes seconds, not the whole total_steps; the feed-forward ablation runs total_steps.
_MEMORY_TASK: dict[str, Any] = dict(
    _BUILTIN, rollout_steps=64, seq_len=64, num_minibatches=2, update_epochs=8, learning_rate=3e-3,
    eval_every=8192, eval_episodes=32, target_return=1.0,
)

# Per-environment defaults that solve the built-in tasks (keys may name TrainConfig fields).
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    # PPO's policy swings on this task: a seed evaluating 420 at 65k steps fell to 290 by 90k. So a run
    # evaluates 10 episodes every 5k steps (about 0.3 s each at full speed, side by side; no wall-time
    # cap, so a seed stops at the same step every run) and stops at the first perfect evaluation that
    # stays perfect over 20 more episodes (10 alone once stopped a run whose policy held 466 over 100),
    # leaving that policy in both checkpoint.pt and last.pt. 32 environments x 16 steps, one minibatch of
    # all 32 sequences per epoch: the same 512 steps per update as 16 x 32, at ~1.2x the steps/s (the
    # recurrent calls are half as long); benchmarks/results/ppo_cartpole_candidate_*.md and _default_*.md.
    "rnnpolicy/CartPoleNoVel-v0": dict(
        _BUILTIN, total_steps=200_000, hidden_size=64, num_envs=32, rollout_steps=16, seq_len=16, num_minibatches=1,
        update_epochs=8, learning_rate=2e-3, gamma=0.98, gae_lambda=0.8, reward_scale=0.1,
        eval_every=5_000, eval_episodes=10, eval_max_share=math.inf, target_return=500.0,
    ),
    # 16 environments (2048 steps per update, same 4 minibatches) for 500k steps: about as many gradient
    # steps as 8 environments for 300k, on twice the data each, at ~1.5x the steps/s. Returns of seeds 1-5,
    # best and final policy: benchmarks/results/train_bench_pendulum.md.
    "rnnpolicy/PendulumNoVel-v0": dict(
        _BUILTIN, total_steps=500_000, hidden_size=64, num_envs=16, rollout_steps=128, seq_len=32, num_minibatches=4,
        update_epochs=10, learning_rate=1e-3, gamma=0.9, gae_lambda=0.95, normalize_obs=True, reward_scale=0.1,
        shared_core=False, init_log_std=-0.5,
    ),
    # T-maze episodes last at most 30 steps: a 128-step chunk holds several whole ones.
    "rnnpolicy/TMaze-v0": {**_MEMORY_TASK, "total_steps": 150_000, "hidden_size": 64, "rollout_steps": 128, "seq_len": 128, "ent_coef": 0.01},
    "rnnpolicy/RepeatFirst-v0": dict(_MEMORY_TASK, total_steps=100_000, hidden_size=32),
    # 64 environments (4096 steps per update) and 8 epochs: with 16 environments and 4 epochs about
    # one seed in five settled at 0.75 success, one cue sent to a neighbouring corner.
    "rnnpolicy/MemoryGrid-v0": dict(
        _MEMORY_TASK, total_steps=200_000, hidden_size=128, num_envs=64, update_epochs=8, learning_rate=1e-3,
        gae_lambda=0.95, ent_coef=0.03, target_return=0.95,
    ),
}
# The same task with 1 ms of CPU per step (the --vector-env async and torchrun test bed).
ENV_DEFAULTS["rnnpolicy/SlowCartPoleNoVel-v0"] = ENV_DEFAULTS["rnnpolicy/CartPoleNoVel-v0"]

# An environment without an entry whose image is read as codes (MiniGrid's grids of object, colour
# and state indices) gets the memory tasks' larger, fewer updates over 64-step rollouts, and a GRU.
# MiniGrid-MemoryS7-v0, 500k steps: on the generic defaults the LSTM and the GRU stay at the
# walk-and-guess plateau (success about 0.5); with these settings the LSTM solves it by 226k steps
# and the GRU by 100k (benchmarks/results/minigrid_memory_s7_*; session 16 in
# benchmarks/results/minigrid_memory_s11_notes.md). They lose on a vector task (CountRecallEasy,
# docs/training.md), so they are not the generic defaults.
CODE_IMAGE_DEFAULTS: dict[str, Any] = dict(cell="gru", rollout_steps=64, num_minibatches=2, update_epochs=8, learning_rate=3e-3)


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    final_values: np.ndarray,
    last_value: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns ``(T, B)``.

    ``rewards``, ``values``, ``terminated``, ``truncated`` are ``(T, B)``; ``final_values``
    ``(T, B)`` holds the value of ``info["final_obs"]`` where an episode was truncated, which is
    bootstrapped into that step's reward (its episode did not really end); ``last_value``
    ``(B,)`` is the value of the observation after the rollout.
    """
    done = terminated | truncated  # (T, B)
    rewards = rewards + gamma * np.where(truncated & ~terminated, final_values, 0.0)
    advantages = np.zeros_like(values)
    next_value, next_advantage = last_value, np.zeros_like(last_value)
    for t in reversed(range(rewards.shape[0])):
        alive = 1.0 - done[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        next_advantage = delta + gamma * gae_lambda * alive * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


@dataclass
class Rollout:
    """One rollout, time-major, ready for the update: ``(T, B, ...)`` tensors flattened to ``(T * B, ...)``.

    With whole-episode BPTT every per-step tensor has ``P`` more rows after those: the replayed
    earlier steps of unfinished episodes (zeros where only the losses would read them).
    """

    obs: Tensor  # (T * B, F), then with whole-episode BPTT the P replayed earlier steps
    actions: Tensor  # (T * B,), or (T * B, A) for box and factored spaces
    logprobs: Tensor  # (T * B,)
    advantages: Tensor  # (T * B,)
    returns: Tensor  # (T * B,)
    episode_start: Tensor  # (T * B,)
    chunk_states: RecurrentState  # (layers * cores, num_chunks * B [+ n], H), chunk c of env b at row c * B + b, then replays' starts
    sequences: PaddedSequences


def _sample(model: ActorCritic, outputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """From ``model.step``'s outputs: a sampled action, its log-probability and the value, each ``(B, ...)``."""
    if model.spec.action.is_discrete:
        logits, _, value = outputs
        log_probs = torch.log_softmax(logits, dim=-1)  # (B, A)
        action = torch.multinomial(log_probs.exp(), 1)  # (B, 1)
        return action.squeeze(1), log_probs.gather(1, action).squeeze(1), value
    if model.spec.action.is_factored:
        logits, _, value = outputs
        nvec = model.spec.action.nvec
        action = factored_sample(logits, nvec)  # (B, k)
        return action, factored_log_prob_entropy(logits, action, nvec)[0], value
    mean, log_std, _, value = outputs
    dist = model.distribution(mean, log_std)
    action = dist.sample()  # (B, A)
    return action, dist.log_prob(action), value


def _env_action(model: ActorCritic, action: Tensor) -> np.ndarray:
    if model.spec.action.kind == "box":
        action = model.clip_action(action)
    return model.spec.action.to_env_batch(action.numpy())


def _build(config: TrainConfig, algo: Config, envs: gym.vector.VectorEnv, obs_norm: ObsNormSpec | None) -> tuple[PolicySpec, ActorCritic]:
    """The spec this run trains and a fresh model of it."""
    assert config.hidden_size is not None
    spec = PolicySpec(
        kind="policy",
        cell=config.cell_kind,
        lmu=config.lmu_spec,
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        obs_encoding=observation_encoding(envs),
        action=action_spec(envs),
        num_cores=1 if algo.shared_core else 2,
        obs_norm=obs_norm,
        env_id=config.env,
        env_wrappers=config.wrapper,
        algo="ppo",
        image=run_image_spec(envs, config),
    )
    model = ActorCritic(spec)
    init_forget_bias(model, algo.forget_bias)
    if spec.action.kind == "box":
        with torch.no_grad():
            model.log_std.fill_(algo.init_log_std)
    return spec, model


def learn(config: TrainConfig, algo: Config, run: RunLog, evaluator: TrainingEvaluator) -> tuple[PolicySpec, ActorCritic]:
    """Train a recurrent actor-critic with PPO; returns its spec (with final obs_norm) and the model.

    Under torchrun each rank steps ``num_envs / world_size`` environments (seeded so that the ranks
    together step the same environments as one process would) and gradients are averaged.
    """
    assert config.total_steps is not None
    dp = distributed.current()
    algo.check_split(dp.world_size)
    device = resolve_device(config.device)
    num_envs = algo.num_envs // dp.world_size
    env_seed = config.seed + dp.rank * num_envs
    envs = make_vector_env(config.env, num_envs, env_seed, config.wrapper, config.vector_env)
    encoding = observation_encoding(envs)
    obs_rms = RunningMeanStd(encoding.flat_dim) if algo.normalize_obs else None
    spec, model = _build(config, algo, envs, obs_rms.to_spec() if obs_rms else None)
    if config.init_from is not None:
        load_initial_weights(model, spec, config.init_from)
    model.to(device)
    dp.broadcast_parameters(model)
    optimizer = FusedAdam(model.parameters(), lr=algo.learning_rate, eps=1e-5)
    rng = np.random.default_rng(config.seed)
    tracker = EpisodeTracker(num_envs)
    carry = EpisodeCarry(num_envs, algo.episode_bptt_max) if algo.episode_bptt else None

    steps_per_update = algo.num_envs * algo.rollout_steps  # over all ranks
    num_updates = algo.planned_steps(config.total_steps) // steps_per_update
    raw_obs, _ = envs.reset(seed=env_seed)
    next_obs = torch.as_tensor(encoding.encode_batch(raw_obs), device=device)  # (B, F)
    next_start = torch.ones(num_envs, device=device)  # (B,)
    state = initial_state(spec, num_envs, device)
    step = 0
    start_time = time.perf_counter()
    snapshot = lambda: _policy(spec, model)  # noqa: E731

    for update in range(1, num_updates + 1):
        if algo.anneal_lr:
            optimizer.lr = algo.learning_rate * (1.0 - (update - 1) / num_updates)
        rollout, next_obs, next_start, state = _collect(model, envs, algo, tracker, next_obs, next_start, state, carry)
        step += steps_per_update
        stats = _update(model, optimizer, rollout, algo, rng, dp)
        if obs_rms is not None:
            # Statistics stay frozen through a rollout and its update, then take in that rollout (every rank's).
            obs_rms.update(dp.gather_rows(rollout.obs[: algo.rollout_steps * num_envs]).cpu().numpy())  # not the replays
            model.normalizer.mean.copy_(torch.as_tensor(obs_rms.mean, dtype=torch.float32))
            model.normalizer.var.copy_(torch.as_tensor(obs_rms.var, dtype=torch.float32))

        evaluator.maybe_evaluate(step, snapshot, final=update == num_updates)
        train_time = time.perf_counter() - start_time - evaluator.eval_time
        run.log(step, tracker, **stats, **evaluator.row(), steps_per_s=step / train_time)
        if dp.any(evaluator.reached_target, device):
            if dp.lead:
                run.note(evaluator.stop_note(step))
            break
    envs.close()
    return _policy(spec, model)


def _policy(spec: PolicySpec, model: ActorCritic) -> tuple[PolicySpec, ActorCritic]:
    """A CPU copy of the policy as it stands, with its spec (``obs_norm`` from the model's buffers)."""
    # The model's normaliser buffers read spec.obs_norm when built: build from the current spec.
    current = _final_spec(spec, model)
    policy = ActorCritic(current)
    policy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return current, policy.eval()


def _cat_rows(states: list[RecurrentState]) -> RecurrentState:
    """Concatenate states along the batch axis: ``(layers, B, H)`` each -> ``(layers, n * B, H)``."""
    c = None if states[0].c is None else torch.cat([s.c for s in states], dim=1)
    return RecurrentState(torch.cat([s.h for s in states], dim=1), c)


def _final_spec(spec: PolicySpec, model: ActorCritic) -> PolicySpec:
    """``spec`` with ``obs_norm`` set to the statistics in the model's normaliser buffers."""
    if spec.obs_norm is None:
        return spec
    norm = dataclasses.replace(
        spec.obs_norm,
        mean=tuple(float(m) for m in model.normalizer.mean.cpu()),
        var=tuple(float(v) for v in model.normalizer.var.cpu()),
    )
    return dataclasses.replace(spec, obs_norm=norm)


@torch.no_grad()
def _collect(
    model: ActorCritic,
    envs: gym.vector.VectorEnv,
    algo: Config,
    tracker: EpisodeTracker,
    next_obs: Tensor,
    next_start: Tensor,
    state: RecurrentState,
    carry: EpisodeCarry | None = None,
) -> tuple[Rollout, Tensor, Tensor, RecurrentState]:
    """Step the environments ``rollout_steps`` times; returns the rollout and where the next one starts.

    With ``carry`` (whole-episode BPTT) each environment's unfinished episode from earlier rollouts
    goes in front of its first sequence, and this rollout's steps join the carry.
    """
    encoding = model.spec.obs_encoding
    device = next_obs.device
    steps, num_envs = algo.rollout_steps, envs.num_envs
    obs, starts, actions, logprobs, values, chunk_states, step_states = [], [], [], [], [], [], []
    rewards = np.zeros((steps, num_envs), dtype=np.float64)
    terminated = np.zeros((steps, num_envs), dtype=bool)
    truncated = np.zeros((steps, num_envs), dtype=bool)
    final_values = np.zeros((steps, num_envs), dtype=np.float32)
    for t in range(steps):
        if t % algo.chunk_len == 0:
            chunk_states.append(state)
        if carry is not None:
            step_states.append(state)
        obs.append(next_obs)
        starts.append(next_start)
        outputs, state = model.step(next_obs, state, next_start, cell_math=True)
        action, logprob, value = _sample(model, outputs)
        actions.append(action)
        logprobs.append(logprob)
        values.append(value)
        raw_obs, reward, term, trunc, infos = envs.step(_env_action(model, action.cpu()))
        rewards[t], terminated[t], truncated[t] = reward, term, trunc
        done = term | trunc
        tracker.update(reward, done, infos)
        cut = np.flatnonzero(trunc & ~term)
        if cut.size:
            # Bootstrap a truncated episode from its last observation, with the state it had reached.
            final_obs = torch.as_tensor(np.stack([encoding.encode(infos["final_obs"][i]) for i in cut]), device=device)
            rows = torch.as_tensor(cut, device=device)
            kept = RecurrentState(state.h[:, rows], None if state.c is None else state.c[:, rows])
            final_outputs, _ = model.step(final_obs, kept, torch.zeros(cut.size, device=device), cell_math=True)
            final_values[t, cut] = final_outputs[-1].cpu().numpy()
        next_obs = torch.as_tensor(encoding.encode_batch(raw_obs), device=device)
        next_start = torch.as_tensor(done, dtype=torch.float32, device=device)
    last_value = model.step(next_obs, state, next_start, cell_math=True)[0][-1]  # (B,)

    values_np = torch.stack(values).cpu().numpy()  # (T, B)
    advantages, returns = compute_gae(
        rewards * algo.reward_scale, values_np, terminated, truncated, final_values,
        last_value.cpu().numpy(), algo.gamma, algo.gae_lambda,
    )
    starts_t = torch.stack(starts)  # (T, B)
    starts_np = starts_t.cpu().numpy() > 0
    obs_t = torch.stack(obs)  # (T, B, F)
    rollout = Rollout(
        obs=obs_t.flatten(0, 1),
        actions=torch.stack(actions).flatten(0, 1),
        logprobs=torch.stack(logprobs).flatten(0, 1),
        advantages=torch.as_tensor(advantages, dtype=torch.float32, device=device).flatten(),
        returns=torch.as_tensor(returns, dtype=torch.float32, device=device).flatten(),
        episode_start=starts_t.flatten(),
        chunk_states=_cat_rows(chunk_states),
        sequences=split_sequences(starts_np, algo.chunk_len),
    )
    if carry is not None:
        rollout = _prepend_episodes(rollout, carry.prefixes())
        carry.extend(obs_t, starts_np, step_states, next_start.cpu().numpy() > 0)
    return rollout, next_obs, next_start, state


def _prepend_episodes(rollout: Rollout, prefixes: Prefixes | None) -> Rollout:
    """``rollout`` with each carried episode's earlier steps in front of its first sequence, as inputs only.

    The earlier steps are appended after the rollout's ``T * B`` rows (with zero actions,
    log-probabilities, advantages and returns, all masked out of the losses) and their start
    states after the stored chunk states.
    """
    if prefixes is None:
        return rollout
    seqs = rollout.sequences
    sequence_of = {int(first): j for j, first in enumerate(seqs.index[0])}
    rows = np.array([sequence_of[int(b)] for b in prefixes.envs])  # env b's first sequence starts at flat index b (t = 0)
    first = rollout.obs.shape[0] + prefixes.offsets  # (n,) the prefixes go after the rollout's rows
    chunk = rollout.chunk_states.h.shape[1] + np.arange(len(prefixes.envs))  # (n,)
    extra = prefixes.obs.shape[0]
    zeros = rollout.logprobs.new_zeros(extra)  # (P,)
    return Rollout(
        obs=torch.cat([rollout.obs, prefixes.obs]),
        actions=torch.cat([rollout.actions, rollout.actions.new_zeros((extra, *rollout.actions.shape[1:]))]),
        logprobs=torch.cat([rollout.logprobs, zeros]),
        advantages=torch.cat([rollout.advantages, zeros]),
        returns=torch.cat([rollout.returns, zeros]),
        episode_start=torch.cat([rollout.episode_start, prefixes.episode_start]),
        chunk_states=_cat_rows([rollout.chunk_states, prefixes.state]),
        sequences=with_prefixes(seqs, rows, first, prefixes.lengths, chunk),
    )


def evaluate_sequences(model: ActorCritic, rollout: Rollout, seqs: PaddedSequences) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Log-probabilities, entropies and values ``(L, S)`` of the padded sequences ``seqs``, and the step index ``(L, S)``.

    One recurrent call: each sequence starts from its chunk's stored state, which its first
    step's ``episode_start`` zeroes when the sequence begins an episode.
    """
    index = torch.as_tensor(seqs.index, device=rollout.obs.device)  # (L, S)
    chunk = torch.as_tensor(seqs.chunk, device=rollout.obs.device)  # (S,)
    stored = rollout.chunk_states
    state = RecurrentState(stored.h[:, chunk], None if stored.c is None else stored.c[:, chunk])  # (layers, S, H)
    episode_start = torch.zeros(index.shape, device=rollout.obs.device)  # (L, S)
    episode_start[0] = rollout.episode_start[index[0]]
    lengths = torch.as_tensor(seqs.lengths, device=rollout.obs.device)  # (S,) the steps after are padding
    params, log_std, value, _ = model(rollout.obs[index], state, episode_start, lengths)  # (L, S, A), ..., (L, S)
    actions = rollout.actions[index]  # (L, S) or (L, S, A)
    if model.spec.action.is_discrete:
        # Categorical's arithmetic without its argument checks: this runs every minibatch.
        log_probs = torch.log_softmax(params, dim=-1)  # (L, S, A)
        entropy = -(log_probs.exp() * log_probs).sum(-1)  # (L, S)
        return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1), entropy, value, index
    if model.spec.action.is_factored:
        return (*factored_log_prob_entropy(params, actions, model.spec.action.nvec), value, index)
    dist = model.distribution(params, log_std)
    return dist.log_prob(actions), dist.entropy(), value, index


def _update(
    model: ActorCritic,
    optimizer: FusedAdam,
    rollout: Rollout,
    algo: Config,
    rng: np.random.Generator,
    dp: DataParallel = distributed.SINGLE,
) -> dict[str, float]:
    """``update_epochs`` passes of clipped PPO over minibatches of whole sequences; returns the last epoch's means.

    Data-parallel (``dp``), each rank's minibatch is its share of one minibatch: the step counts
    and advantage statistics are summed over the ranks and the gradients averaged, so the update
    equals one process's on the ranks' data together (exactly so with one minibatch per epoch).
    """
    num_sequences = rollout.sequences.lengths.shape[0]
    for _ in range(algo.update_epochs):
        totals: dict[str, Tensor] = {}
        for rows in np.array_split(rng.permutation(num_sequences), algo.num_minibatches):
            seqs = rollout.sequences.select(rows)
            logprob, entropy, value, index = evaluate_sequences(model, rollout, seqs)
            mask = torch.as_tensor(seqs.mask, dtype=torch.float32, device=logprob.device)  # (L, S)
            # Means over the steps of every rank's minibatch: each rank's sum / the ranks' step count,
            # times world_size, which the gradient average divides out again.
            count = dp.all_sum(mask.sum()) / dp.world_size
            masked_mean = lambda x: (x * mask).sum() / count  # noqa: E731
            advantages = rollout.advantages[index]  # (L, S)
            if algo.normalize_advantages:
                with torch.no_grad():
                    moments = dp.all_sum(torch.stack([(advantages * mask).sum(), (advantages**2 * mask).sum()]))
                    mean = moments[0] / (count * dp.world_size)
                    std = torch.sqrt((moments[1] / (count * dp.world_size) - mean**2).clamp(min=0.0))
                advantages = (advantages - mean) / (std + 1e-8)
            log_ratio = logprob - rollout.logprobs[index]
            ratio = log_ratio.exp()
            clipped = torch.clamp(ratio, 1.0 - algo.clip_coef, 1.0 + algo.clip_coef)
            policy_loss = masked_mean(torch.maximum(-advantages * ratio, -advantages * clipped))
            value_loss = 0.5 * masked_mean((value - rollout.returns[index]) ** 2)
            entropy_mean = masked_mean(entropy)
            loss = policy_loss + algo.vf_coef * value_loss - algo.ent_coef * entropy_mean
            optimizer.zero_grad()
            loss.backward()
            dp.all_reduce_gradients(model.parameters())
            torch.nn.utils.clip_grad_norm_(model.parameters(), algo.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                batch_stats = dict(
                    policy_loss=policy_loss,
                    value_loss=value_loss,
                    entropy=entropy_mean,
                    approx_kl=masked_mean((ratio - 1.0) - log_ratio),
                    clip_fraction=masked_mean(((ratio - 1.0).abs() > algo.clip_coef).float()),
                )
                totals = {k: totals.get(k, 0.0) + v.detach() for k, v in batch_stats.items()}
    return {k: float(v) / algo.num_minibatches for k, v in totals.items()}
