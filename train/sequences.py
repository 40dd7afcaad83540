"""Padded sequences from a time-major rollout, for one fused recurrent pass per minibatch.

A rollout of ``T`` steps from ``B`` environments is cut into BPTT chunks of ``seq_len`` steps
(the recurrent state is stored at each chunk start) and each chunk further at episode starts,
so that every sequence begins either at a chunk start (from the stored state) or at an episode
start (from zeros, which ``episode_start`` at its first step produces). Sequences are padded to
equal length; the padding is masked out of the losses. Generic: any recurrent trainer that
stores chunk-start states can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PaddedSequences:
    """``S`` sequences padded to ``L`` steps; flat indices point into ``(T * B)`` time-major arrays."""

    index: np.ndarray
    """``(L, S)`` flat index ``t * B + b`` of each step; padding repeats the sequence's last step."""
    mask: np.ndarray
    """``(L, S)`` True on real steps, False on padding."""
    lengths: np.ndarray
    """``(S,)`` real steps of each sequence."""
    chunk: np.ndarray
    """``(S,)`` the BPTT chunk each sequence lies in, as ``(t // seq_len) * B + b``: which stored state starts it."""

    def select(self, rows: np.ndarray) -> PaddedSequences:
        """The sequences ``rows``, trimmed to their own longest length."""
        length = int(self.lengths[rows].max())
        return PaddedSequences(self.index[:length, rows], self.mask[:length, rows], self.lengths[rows], self.chunk[rows])


def split_sequences(episode_start: np.ndarray, seq_len: int) -> PaddedSequences:
    """Cut a rollout with ``episode_start`` ``(T, B)`` into sequences at chunk and episode starts."""
    steps, envs = episode_start.shape
    if seq_len < 1 or steps % seq_len != 0:
        raise ValueError(f"seq_len must divide the rollout's {steps} steps, got {seq_len}")
    starts = np.asarray(episode_start, dtype=bool).copy()  # (T, B)
    starts[::seq_len] = True
    env_major = starts.T.ravel()  # (B * T,): env 0's steps, then env 1's, ...
    first = np.flatnonzero(env_major)  # (S,) where each sequence starts
    lengths = np.diff(np.append(first, env_major.size))  # (S,)
    offsets = np.arange(int(lengths.max()))[:, None]  # (L, 1)
    mask = offsets < lengths[None, :]  # (L, S)
    position = first[None, :] + np.minimum(offsets, lengths[None, :] - 1)  # (L, S) env-major
    env, t = np.divmod(position, steps)
    index = t * envs + env  # (L, S) time-major
    chunk = (t[0] // seq_len) * envs + env[0]  # (S,)
    return PaddedSequences(index=index, mask=mask, lengths=lengths, chunk=chunk)


def with_prefixes(
    seqs: PaddedSequences, rows: np.ndarray, first: np.ndarray, lengths: np.ndarray, chunk: np.ndarray
) -> PaddedSequences:
    """``seqs`` with sequence ``rows[j]`` preceded by ``lengths[j]`` earlier steps at flat indices ``first[j] ...``.

    The earlier steps (an episode's steps from past rollouts) are inputs only: masked out of the
    losses, they carry the recurrent pass, and the gradient, back to where they begin; the
    sequence then starts from stored state ``chunk[j]`` instead of its own.
    """
    count = seqs.lengths.shape[0]
    extra = np.zeros(count, dtype=np.int64)  # (S,) steps put in front of each sequence
    extra[rows] = lengths
    start = np.zeros(count, dtype=np.int64)
    start[rows] = first
    total = seqs.lengths + extra  # (S,)
    offsets = np.arange(int(total.max()))[:, None]  # (L, 1)
    own = offsets - extra[None, :]  # (L, S) position within the sequence's own steps; < 0 in front of them
    index = seqs.index[np.clip(own, 0, seqs.lengths[None, :] - 1), np.arange(count)[None, :]]  # (L, S)
    index = np.where(own < 0, start[None, :] + offsets, index)
    mask = (own >= 0) & (own < seqs.lengths[None, :])
    starts_from = seqs.chunk.copy()
    starts_from[rows] = chunk
    return PaddedSequences(index=index, mask=mask, lengths=total, chunk=starts_from)
