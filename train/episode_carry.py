"""Each environment's unfinished episode, carried from rollout to rollout for whole-episode BPTT.

A rollout cuts episodes: one that began in an earlier rollout continues at the new rollout's first
step from a stored state, with no gradient into its earlier steps. :class:`EpisodeCarry` keeps those
earlier steps (their observations and the recurrent state each began from, at most ``max_steps``
of them) so that the update can replay them in front of the episode's steps in this rollout
(:func:`rnnpolicy.train.sequences.with_prefixes`), as inputs only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rnnpolicy.train.models import RecurrentState


@dataclass
class Prefixes:
    """The carried steps of the environments ``envs``, laid end to end (``P`` steps in all)."""

    envs: np.ndarray  # (n,) environment of each prefix
    lengths: np.ndarray  # (n,) steps of each
    offsets: np.ndarray  # (n,) the row of obs where each begins
    obs: Tensor  # (P, F)
    episode_start: Tensor  # (P,) 1 on a prefix's first step when it is its episode's first step
    state: RecurrentState  # (layers, n, H): the state each prefix's first step began from


class EpisodeCarry:
    """Per environment, the steps of its current episode collected in past rollouts (the last ``max_steps``)."""

    def __init__(self, num_envs: int, max_steps: int) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self._obs: list[Tensor | None] = [None] * num_envs  # (p, F) each
        self._h: list[Tensor | None] = [None] * num_envs  # (p, layers, H): the state each step began from
        self._c: list[Tensor | None] = [None] * num_envs
        self._from_start = [False] * num_envs  # whether step 0 is the episode's first

    def prefixes(self) -> Prefixes | None:
        """The carried steps of every environment that has some; None when none has."""
        envs = np.array([b for b, rows in enumerate(self._obs) if rows is not None], dtype=np.int64)
        if envs.size == 0:
            return None
        obs = [self._obs[b] for b in envs]
        lengths = np.array([len(rows) for rows in obs], dtype=np.int64)
        episode_start = torch.zeros(int(lengths.sum()), device=obs[0].device)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        episode_start[torch.as_tensor(offsets[[self._from_start[b] for b in envs]], dtype=torch.long)] = 1.0
        h = torch.stack([self._h[b][0] for b in envs], dim=1)  # (layers, n, H)
        c = None if self._c[envs[0]] is None else torch.stack([self._c[b][0] for b in envs], dim=1)
        return Prefixes(envs, lengths, offsets, torch.cat(obs), episode_start, RecurrentState(h, c))

    def extend(self, obs: Tensor, episode_start: np.ndarray, states: list[RecurrentState], next_start: np.ndarray) -> None:
        """Take in a rollout: ``obs`` ``(T, B, F)``, ``episode_start`` ``(T, B)``, the state before each step
        (``T`` of ``(layers, B, H)``), and ``next_start`` ``(B,)``: whether the next rollout begins an episode."""
        h = torch.stack([s.h for s in states])  # (T, layers, B, H)
        c = None if states[0].c is None else torch.stack([s.c for s in states])
        for b in range(obs.shape[1]):
            if next_start[b]:
                self._obs[b] = self._h[b] = self._c[b] = None
                continue
            begun = np.flatnonzero(episode_start[:, b])
            first = int(begun[-1]) if begun.size else 0
            rows = [(obs[first:, b], h[first:, :, b], None if c is None else c[first:, :, b])]
            if not begun.size and self._obs[b] is not None:
                rows.insert(0, (self._obs[b], self._h[b], self._c[b]))
            from_start = bool(begun.size) or self._from_start[b]
            kept_obs = torch.cat([r[0] for r in rows])
            cut = max(0, len(kept_obs) - self.max_steps)
            self._obs[b] = kept_obs[cut:]
            self._h[b] = torch.cat([r[1] for r in rows])[cut:]
            self._c[b] = None if c is None else torch.cat([r[2] for r in rows])[cut:]
            self._from_start[b] = from_start and cut == 0
