"""Adam for the trainers: torch's fused Adam kernel, without ``torch.optim.Optimizer``'s start-up.

``torch.optim.Optimizer.__init__`` imports ``torch._dynamo`` (about 2.7 s here, a tenth of a
default CartPole run's wall time) for hooks the trainers never use. :class:`FusedAdam` calls the
same functional kernel, ``torch.optim.adam.adam(..., fused=True)``, with the state
``torch.optim.Adam(fused=True)`` keeps, so its steps equal that optimizer's bit for bit
(tests/test_optim.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam


class FusedAdam:
    """Adam (no weight decay, no amsgrad) over ``params``, one fused kernel per step.

    ``lr`` may be changed between steps (the PPO trainer anneals it).
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if lr <= 0.0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("FusedAdam got no parameters that require a gradient")
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self._exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # float32 step counters on the parameters' device, as torch.optim.Adam keeps them for the fused kernel.
        self._steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``set_to_none``, as ``torch.optim`` does by default)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step on the parameters that have a gradient."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        adam(
            [self.params[i] for i in live],
            [self.params[i].grad for i in live],  # type: ignore[misc]
            [self._exp_avgs[i] for i in live],
            [self._exp_avg_sqs[i] for i in live],
            [],
            [self._steps[i] for i in live],
            fused=True,
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=self.lr,
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
        )
