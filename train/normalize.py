"""Running mean and variance of observations, for the normalisation a policy carries in its spec."""

from __future__ import annotations

import numpy as np

from rnnpolicy.spec import ObsNormSpec


class RunningMeanStd:
    """Mean and variance over every row seen so far, merged batch by batch (Chan et al.'s parallel update)."""

    def __init__(self, dim: int, epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(dim, dtype=np.float64)
        self.var = np.ones(dim, dtype=np.float64)
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        """Fold in ``batch`` ``(N, dim)``."""
        batch = np.asarray(batch, dtype=np.float64).reshape(-1, self.mean.shape[0])
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(axis=0)
        batch_var = batch.var(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def to_spec(self, clip: float = 10.0) -> ObsNormSpec:
        """The statistics as the spec's ``obs_norm``, which the model applies to its input."""
        return ObsNormSpec(mean=tuple(float(m) for m in self.mean), var=tuple(float(v) for v in self.var), clip=clip)
