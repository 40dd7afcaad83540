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


@dataclass
class _Carried:
    """One environment's carried steps."""

    obs: Tensor  # (p, F)
    h: Tensor  # (p, layers, H): the state each step began from
    c: Tensor | None  # (p, layers, H) for an LSTM
    from_start: bool  # whether step 0 is the episode's first

    def followed_by(self, later: _Carried) -> _Carried:
        c = None if self.c is None or later.c is None else torch.cat([self.c, later.c])
        return _Carried(torch.cat([self.obs, later.obs]), torch.cat([self.h, later.h]), c, self.from_start)

    def last(self, max_steps: int) -> _Carried:
        cut = len(self.obs) - max_steps
        if cut <= 0:
            return self
        return _Carried(self.obs[cut:], self.h[cut:], None if self.c is None else self.c[cut:], from_start=False)


class EpisodeCarry:
    """Per environment, the steps of its current episode collected in past rollouts (the last ``max_steps``)."""

    def __init__(self, num_envs: int, max_steps: int) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self._carried: list[_Carried | None] = [None] * num_envs

    def prefixes(self) -> Prefixes | None:
        """The carried steps of every environment that has some; None when none has."""
        envs = np.array([b for b, kept in enumerate(self._carried) if kept is not None], dtype=np.int64)
        if envs.size == 0:
            return None
        kept = [self._carried[b] for b in envs]
        lengths = np.array([len(k.obs) for k in kept], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        episode_start = torch.zeros(int(lengths.sum()), device=kept[0].obs.device)
        episode_start[torch.as_tensor(offsets[[k.from_start for k in kept]], dtype=torch.long)] = 1.0
        h = torch.stack([k.h[0] for k in kept], dim=1)  # (layers, n, H)
        c = None if kept[0].c is None else torch.stack([k.c[0] for k in kept], dim=1)
        return Prefixes(envs, lengths, offsets, torch.cat([k.obs for k in kept]), episode_start, RecurrentState(h, c))

    def extend(self, obs: Tensor, episode_start: np.ndarray, states: list[RecurrentState], next_start: np.ndarray) -> None:
        """Take in a rollout: ``obs`` ``(T, B, F)``, ``episode_start`` ``(T, B)``, the state before each step
        (``T`` of ``(layers, B, H)``), and ``next_start`` ``(B,)``: whether the next rollout begins an episode."""
        h = torch.stack([s.h for s in states])  # (T, layers, B, H)
        c = None if states[0].c is None else torch.stack([s.c for s in states])
        for b in range(obs.shape[1]):
            if next_start[b]:
                self._carried[b] = None
                continue
            begun = np.flatnonzero(episode_start[:, b])
            first = int(begun[-1]) if begun.size else 0  # this rollout's steps of the episode still running
            new = _Carried(obs[first:, b], h[first:, :, b], None if c is None else c[first:, :, b], from_start=bool(begun.size))
            earlier = self._carried[b]
            if not begun.size and earlier is not None:
                new = earlier.followed_by(new)
            self._carried[b] = new.last(self.max_steps)
