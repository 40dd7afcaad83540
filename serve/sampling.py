"""Sampled (non-deterministic) actions: each session draws with its own generator, seeded by CreateSession."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rnnpolicy.serve.layout import OutputLayout
from rnnpolicy.spec import ACTION, LOG_STD, LOGITS, MEAN

__all__ = ["sample_actions"]


def sample_actions(layout: OutputLayout, packed: np.ndarray, rows: Sequence[int],
                   generators: Sequence[np.random.Generator]) -> None:
    """Replace the greedy action in rows ``rows`` of ``packed`` ``(k, width)`` (in place) by one drawn with
    each row's generator (``generators[i]`` for ``rows[i]``)."""
    cols = layout.columns
    action = cols[ACTION]
    spec = layout.spec
    if spec.action.is_discrete:
        logits = packed[rows, cols[LOGITS]].astype(np.float64)  # (n, num_actions)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        cdf = np.cumsum(probs, axis=1)
        for i, (row, generator) in enumerate(zip(rows, generators)):
            u = generator.random() * cdf[i, -1]
            packed[row, action.start] = min(int(np.searchsorted(cdf[i], u, side="right")), cdf.shape[1] - 1)
    elif spec.action.is_factored:
        # One draw per entry, from that entry's slice of the concatenated logits.
        logits = packed[rows, cols[LOGITS]].astype(np.float64)  # (n, sum(nvec))
        bounds = np.cumsum((0,) + tuple(spec.action.nvec))
        for i, (row, generator) in enumerate(zip(rows, generators)):
            u = generator.random(len(bounds) - 1)  # (k,)
            for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                cdf = np.cumsum(np.exp(logits[i, lo:hi] - logits[i, lo:hi].max()))
                packed[row, action.start + j] = min(int(np.searchsorted(cdf, u[j] * cdf[-1], side="right")), hi - lo - 1)
    else:
        low = np.asarray(spec.action.low, dtype=np.float32)
        high = np.asarray(spec.action.high, dtype=np.float32)
        for row, generator in zip(rows, generators):
            mean = packed[row, cols[MEAN]]
            noise = generator.standard_normal(mean.shape[0]).astype(np.float32)
            packed[row, action] = np.clip(mean + np.exp(packed[row, cols[LOG_STD]]) * noise, low, high)
