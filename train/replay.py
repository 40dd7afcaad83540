"""Sequence replay for recurrent Q-learning (R2D2's stored-state replay).

:class:`SequenceCollector` cuts each vector-env row's stream of steps into sequences of
``seq_len`` steps that start every ``stride`` steps and never cross an episode's end: a
sequence that reaches the end is cut there and padded, with ``mask`` telling the real steps.
Each sequence keeps the recurrent state the actor had at its first step (R2D2's stored
state), and one observation more than it has steps: the one after its last step (the final
observation when the episode ended there), so every step's target can bootstrap inside it.
:class:`SequenceReplay` holds the sequences in a ring and samples them uniformly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from rnnpolicy.train.models import RecurrentState


class SequenceBatch(NamedTuple):
    """Sampled sequences, time-major; padding steps are zeros with ``mask`` False."""

    obs: Tensor
    """``(T + 1, B, obs_dim)``: the encoded observations, plus the one after the last step."""
    actions: Tensor
    """``(T, B)`` int64."""
    rewards: Tensor
    """``(T, B)`` float32."""
    terminated: Tensor
    """``(T, B)`` bool: True at the step whose episode terminated (no bootstrap after it)."""
    mask: Tensor
    """``(T, B)`` bool: True at real steps, which form a prefix of each sequence."""
    state: RecurrentState
    """``(layers, B, hidden)``: the actor's state before each sequence's first observation."""
    episode_first: Tensor
    """``(B,)`` bool: the sequence starts with its episode, so its stored state is exact zeros."""


class SequenceReplay:
    """A ring of ``capacity`` sequences of up to ``seq_len`` steps each."""

    def __init__(self, capacity: int, seq_len: int, obs_dim: int, state_shapes: tuple[tuple[int, int], ...]) -> None:
        """``state_shapes``: ``(layers, width)`` of each state tensor in graph order (``h``, then any ``c``)."""
        if capacity < 1 or seq_len < 1:
            raise ValueError(f"need capacity >= 1 and seq_len >= 1, got {capacity} and {seq_len}")
        if len(state_shapes) not in (1, 2):
            raise ValueError(f"need the shapes of 1 or 2 state tensors, got {state_shapes}")
        self.capacity = capacity
        self.seq_len = seq_len
        self.obs_dim = obs_dim
        self.state_shapes = tuple(state_shapes)
        self._obs = np.zeros((capacity, seq_len + 1, obs_dim), dtype=np.float32)
        self._actions = np.zeros((capacity, seq_len), dtype=np.int64)
        self._rewards = np.zeros((capacity, seq_len), dtype=np.float32)
        self._terminated = np.zeros((capacity, seq_len), dtype=bool)
        self._mask = np.zeros((capacity, seq_len), dtype=bool)
        self._h = np.zeros((capacity, *state_shapes[0]), dtype=np.float32)  # (N, layers, hidden)
        self._c = np.zeros((capacity, *state_shapes[1]), dtype=np.float32) if len(state_shapes) == 2 else None
        self._episode_first = np.zeros(capacity, dtype=bool)
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: bool,
        state_h: np.ndarray,
        state_c: np.ndarray | None,
        episode_first: bool,
    ) -> None:
        """Store one sequence of ``v`` steps: ``obs`` ``(v + 1, obs_dim)``, ``actions`` and ``rewards`` ``(v,)``.

        ``terminated`` says the episode terminated on the last step; the state arrays are
        ``(layers, hidden)``, the actor's state before ``obs[0]``.
        """
        steps = len(actions)
        if not 1 <= steps <= self.seq_len or len(rewards) != steps or len(obs) != steps + 1:
            raise ValueError(
                f"a sequence needs 1 to {self.seq_len} steps and one observation more, got "
                f"{len(obs)} observations, {steps} actions and {len(rewards)} rewards"
            )
        i = self._next
        self._obs[i] = 0.0
        self._obs[i, : steps + 1] = obs
        self._actions[i] = 0
        self._actions[i, :steps] = actions
        self._rewards[i] = 0.0
        self._rewards[i, :steps] = rewards
        self._terminated[i] = False
        self._terminated[i, steps - 1] = terminated
        self._mask[i] = False
        self._mask[i, :steps] = True
        self._h[i] = state_h
        if self._c is not None:
            self._c[i] = state_c
        self._episode_first[i] = episode_first
        self._next = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> SequenceBatch:
        """``batch_size`` sequences drawn uniformly (with replacement) by ``rng``."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.batch(rng.integers(self._size, size=batch_size), device)

    def batch(self, indices: np.ndarray, device: torch.device | str = "cpu") -> SequenceBatch:
        """The stored sequences at ``indices`` (each in ``[0, len(self))``) as one batch."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self._size):
            raise ValueError(f"sequence indices must lie in [0, {self._size}), got {indices}")

        def batch_second(array: np.ndarray) -> Tensor:
            # (N, T, ...) -> (T, B, ...); also (N, layers, hidden) -> (layers, B, hidden)
            return torch.from_numpy(np.swapaxes(array[indices], 0, 1).copy()).to(device)

        return SequenceBatch(
            obs=batch_second(self._obs),
            actions=batch_second(self._actions),
            rewards=batch_second(self._rewards),
            terminated=batch_second(self._terminated),
            mask=batch_second(self._mask),
            state=RecurrentState(batch_second(self._h), None if self._c is None else batch_second(self._c)),
            episode_first=torch.from_numpy(self._episode_first[indices]).to(device),
        )


class SequenceCollector:
    """Turns vector-env steps into replay sequences, one open window per env row.

    A window holds up to ``seq_len`` steps and the state at each. It is stored when it is
    full, then slides on by ``stride`` steps (so sequences overlap by ``seq_len - stride``);
    when its episode ends it is stored as it is and the row's next window starts empty,
    with the next episode.
    """

    def __init__(self, replay: SequenceReplay, num_envs: int, stride: int) -> None:
        seq_len = replay.seq_len
        if not 1 <= stride <= seq_len:
            raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
        self.replay = replay
        self.seq_len = seq_len
        self.stride = stride
        self._obs = np.zeros((num_envs, seq_len + 1, replay.obs_dim), dtype=np.float32)
        self._actions = np.zeros((num_envs, seq_len), dtype=np.int64)
        self._rewards = np.zeros((num_envs, seq_len), dtype=np.float32)
        shapes = replay.state_shapes
        self._h = np.zeros((num_envs, seq_len, *shapes[0]), dtype=np.float32)  # (N, L, layers, hidden)
        self._c = np.zeros((num_envs, seq_len, *shapes[1]), dtype=np.float32) if len(shapes) == 2 else None
        self._length = np.zeros(num_envs, dtype=np.int64)
        self._episode_first = np.ones(num_envs, dtype=bool)

    def add(
        self,
        obs: np.ndarray,
        state: RecurrentState,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
    ) -> None:
        """Record one vector step for every row.

        ``obs`` ``(N, obs_dim)`` is what the actor saw, with ``state`` ``(layers, N, hidden)``
        the state it acted from (already zeroed where an episode started); ``next_obs`` is
        the observation after the step, the *final* one where the episode ended.
        """
        rows = np.arange(len(obs))
        at = self._length
        self._obs[rows, at] = obs
        self._obs[rows, at + 1] = next_obs
        self._actions[rows, at] = actions
        self._rewards[rows, at] = rewards
        self._h[rows, at] = np.swapaxes(state.h.cpu().numpy(), 0, 1)
        if self._c is not None:
            assert state.c is not None
            self._c[rows, at] = np.swapaxes(state.c.cpu().numpy(), 0, 1)
        self._length += 1
        done = terminated | truncated
        for row in np.flatnonzero(done | (self._length == self.seq_len)):
            self._store(row, bool(terminated[row]))
            if done[row]:
                self._length[row] = 0
                self._episode_first[row] = True
            else:
                self._slide(row)

    def _store(self, row: int, terminated: bool) -> None:
        steps = self._length[row]
        self.replay.add(
            self._obs[row, : steps + 1],
            self._actions[row, :steps],
            self._rewards[row, :steps],
            terminated,
            self._h[row, 0],
            None if self._c is None else self._c[row, 0],
            bool(self._episode_first[row]),
        )

    def _slide(self, row: int) -> None:
        s, keep = self.stride, self.seq_len - self.stride
        self._obs[row, : keep + 1] = self._obs[row, s:].copy()
        self._actions[row, :keep] = self._actions[row, s:].copy()
        self._rewards[row, :keep] = self._rewards[row, s:].copy()
        self._h[row, :keep] = self._h[row, s:].copy()
        if self._c is not None:
            self._c[row, :keep] = self._c[row, s:].copy()
        self._length[row] = keep
        self._episode_first[row] = False
