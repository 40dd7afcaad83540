"""One PPO update on fixed data, in one process or as one rank of a torchrun job (used by test_distributed).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dp_update.py OUT.pt

Each rank takes its share of the environment columns of the same rollout; rank 0 saves the
updated weights to ``OUT.pt``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from rnnpolicy import ActionSpec, ObsEncoding, PolicySpec
from rnnpolicy.train import distributed, ppo
from rnnpolicy.train.models import ActorCritic, RecurrentState
from rnnpolicy.train.optim import FusedAdam
from rnnpolicy.train.sequences import split_sequences

STEPS, ENVS, FEATURES, CHUNK, HIDDEN = 16, 4, 3, 8, 8
# One minibatch per epoch: the ranks' minibatches together are exactly the single process's.
ALGO = ppo.Config(num_envs=ENVS, rollout_steps=STEPS, seq_len=CHUNK, num_minibatches=1, update_epochs=3, ent_coef=0.01)
SPEC = PolicySpec(kind="policy", cell="lstm", num_layers=1, hidden_size=HIDDEN, obs_encoding=ObsEncoding.flat(FEATURES),
                  action=ActionSpec("discrete", n=3), algo="ppo")


def rollout(columns: list[int]) -> ppo.Rollout:
    """The environment ``columns`` of one fixed random rollout, with episode starts inside the chunks."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(STEPS, ENVS, FEATURES, generator=g)
    actions = torch.randint(0, 3, (STEPS, ENVS), generator=g)
    logprobs = torch.log(torch.full((STEPS, ENVS), 1 / 3)) + 0.1 * torch.randn(STEPS, ENVS, generator=g)
    advantages = torch.randn(STEPS, ENVS, generator=g)
    returns = torch.randn(STEPS, ENVS, generator=g)
    starts = (torch.rand(STEPS, ENVS, generator=g) < 0.15).float()
    starts[0] = 1.0
    chunks = STEPS // CHUNK
    h = torch.randn(1, chunks * ENVS, HIDDEN, generator=g) * 0.1  # chunk c of env b at row c * ENVS + b
    c = torch.randn(1, chunks * ENVS, HIDDEN, generator=g) * 0.1
    rows = torch.tensor([k * ENVS + b for k in range(chunks) for b in columns])
    pick = lambda x: x[:, columns].flatten(0, 1)  # noqa: E731  (T, B', ...) -> (T * B', ...)
    return ppo.Rollout(
        obs=pick(obs), actions=pick(actions), logprobs=pick(logprobs), advantages=pick(advantages), returns=pick(returns),
        episode_start=pick(starts), chunk_states=RecurrentState(h[:, rows], c[:, rows]),
        sequences=split_sequences(starts[:, columns].numpy() > 0, CHUNK),
    )


def updated_weights(dp: distributed.DataParallel) -> dict[str, torch.Tensor]:
    """The model after one update on this rank's share of the rollout."""
    torch.manual_seed(0)
    model = ActorCritic(SPEC)
    optimizer = FusedAdam(model.parameters(), lr=1e-2, eps=1e-5)  # as the trainer
    share = ENVS // dp.world_size
    ppo._update(model, optimizer, rollout(list(range(dp.rank * share, (dp.rank + 1) * share))), ALGO, np.random.default_rng(0), dp)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    dp = distributed.setup(torch.device("cpu"))
    weights = updated_weights(dp)
    if dp.lead:
        torch.save(weights, sys.argv[1])
    distributed.teardown()
