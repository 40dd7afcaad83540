"""``checkpoint.pt`` and ``last.pt``: weights, policy spec, training config and normalisation statistics.

Only plain containers and tensors are stored, so ``torch.load(path, weights_only=True)`` works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnpolicy.spec import PolicySpec
from rnnpolicy.train.models import ActorCritic, QNetwork, build_model

CHECKPOINT_NAME = "checkpoint.pt"
"""The run's best evaluated policy (its final one when the run did not evaluate)."""
LAST_NAME = "last.pt"
"""The run's final policy."""


@dataclass
class Checkpoint:
    """A trained policy: its spec, its weights and the config that trained it."""

    spec: PolicySpec
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)

    def build(self) -> QNetwork | ActorCritic:
        """The network with these weights, in eval mode."""
        model = build_model(self.spec)
        model.load_state_dict(self.state_dict)
        return model.eval()


def save_checkpoint(path: str | Path, spec: PolicySpec, model: torch.nn.Module, config: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "rnnpolicy.checkpoint",
        # JSON round trip: only plain dicts, lists, strings and numbers reach the pickle.
        "spec": json.loads(spec.to_json()),
        "config": json.loads(json.dumps(config, default=str)),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


SHAPE_FIELDS = ("kind", "cell", "lmu", "num_layers", "hidden_size", "num_cores", "obs_encoding", "action", "image")
"""The spec fields that decide a network's weights: ``--init-from`` needs them equal."""


def load_initial_weights(model: torch.nn.Module, spec: PolicySpec, path: str | Path) -> None:
    """``--init-from``: copy the weights of the checkpoint at ``path`` into ``model``, a fresh network of ``spec``.

    ``ValueError`` naming the first spec field where the checkpoint's network differs from this run's, and for
    observation normalisation on either side: the checkpoint keeps the statistics but not how many observations
    they summarise, so they cannot be continued, and weights trained on normalised inputs cannot run without them.
    """
    checkpoint = load_checkpoint(path)
    normalised = [side for side, s in (("the checkpoint", checkpoint.spec), ("this run", spec)) if s.obs_norm is not None]
    if normalised:
        raise ValueError(
            f"--init-from cannot continue a run that normalises observations (the statistics' count is not stored in "
            f"{str(path)!r}), got normalize_obs in {' and '.join(normalised)}"
        )
    for name in SHAPE_FIELDS:
        theirs, ours = getattr(checkpoint.spec, name), getattr(spec, name)
        if theirs != ours:
            raise ValueError(
                f"--init-from {str(path)!r} holds a network with {name} {theirs!r}, but this run builds {ours!r}: "
                f"train with the checkpoint's network and spaces (--algo, --cell, --hidden-size, --num-layers, --wrapper)"
            )
    model.load_state_dict(checkpoint.state_dict)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; ``ValueError`` naming the file for a missing, corrupt or foreign one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ValueError(f"checkpoint {str(path)!r} is not a readable torch file: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != "rnnpolicy.checkpoint":
        raise ValueError(f"{str(path)!r} is not an rnnpolicy checkpoint (no 'format': 'rnnpolicy.checkpoint')")
    spec = PolicySpec.from_dict(payload["spec"])
    checkpoint = Checkpoint(spec, payload["state_dict"], payload.get("config", {}))
    try:
        checkpoint.build()
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {str(path)!r}: weights do not match its spec: {exc}") from None
    return checkpoint
