"""The exported computation: one policy step with plain tensors in and out.

:func:`step_module` wraps a trained network's ``step`` so that the graph inputs are
``(obs, episode_start, state_h[, state_c | state_m])`` and the outputs are ``spec.output_names`` in order.
The reset at an episode start is the network's own ``state * (1 - episode_start)``, so it
traces into the exported graph exactly as it runs in training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from rnnpolicy.spec import PolicySpec
from rnnpolicy.train.models import ActorCritic, QNetwork, RecurrentState

__all__ = ["RNN_SHAPE_CHECK_WARNING", "PolicyStep", "example_inputs", "step_module"]

RNN_SHAPE_CHECK_WARNING = r"Converting a tensor to a Python boolean might cause the trace to be incorrect"
"""What tracing ``nn.LSTM``/``nn.GRU`` warns about their input-size checks, which are not part of the step."""

EXAMPLE_BATCH = 3
"""Batch size the graphs are traced with: >= 2, so that no exporter specialises the batch axis to 1."""


class PolicyStep(nn.Module):
    """Base of the exported step modules; the subclass fixes the arity of ``forward``."""

    def __init__(self, model: QNetwork | ActorCritic) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.spec: PolicySpec = model.spec

    def _step(self, obs: Tensor, episode_start: Tensor, state: RecurrentState) -> tuple[Tensor, ...]:
        # obs: (B, F); episode_start: (B,); state tensors: (layers, B, H)
        heads, next_state = self.model.step(obs, state, episode_start.to(torch.float32))
        return (*heads, *(t for t in next_state if t is not None))


class _SingleStateStep(PolicyStep):
    """GRU and feed-forward cores: ``state_h`` only."""

    def forward(self, obs: Tensor, episode_start: Tensor, state_h: Tensor) -> tuple[Tensor, ...]:
        return self._step(obs, episode_start, RecurrentState(state_h))


class _LstmStep(PolicyStep):
    """LSTM cores: ``state_h`` and ``state_c``."""

    def forward(self, obs: Tensor, episode_start: Tensor, state_h: Tensor, state_c: Tensor) -> tuple[Tensor, ...]:
        return self._step(obs, episode_start, RecurrentState(state_h, state_c))


class _LmuStep(PolicyStep):
    """Legendre memory cores: ``state_h`` and the memory ``state_m``."""

    def forward(self, obs: Tensor, episode_start: Tensor, state_h: Tensor, state_m: Tensor) -> tuple[Tensor, ...]:
        return self._step(obs, episode_start, RecurrentState(state_h, state_m))


def step_module(model: QNetwork | ActorCritic) -> PolicyStep:
    """The thin exportable step module of ``model``, in eval mode and without gradients."""
    steps = {"lstm": _LstmStep, "lmu": _LmuStep}
    return steps.get(model.spec.cell, _SingleStateStep)(model)


def example_inputs(spec: PolicySpec, batch: int = EXAMPLE_BATCH, seed: int = 0) -> tuple[Tensor, ...]:
    """Inputs in ``spec.input_names`` order for tracing: random obs and state, one row starting an episode."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((batch, spec.obs_dim), dtype=np.float32)  # (B, F)
    episode_start = np.zeros(batch, dtype=np.float32)  # (B,)
    episode_start[0] = 1.0
    states = [rng.standard_normal((s.layers, batch, s.hidden), dtype=np.float32) for s in spec.state_tensors]
    return tuple(torch.from_numpy(a) for a in (obs, episode_start, *states))
