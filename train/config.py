"""The options every training run shares; each algorithm adds its own dataclass (``PPOConfig``, ``DRQNConfig``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """What to train, where to write it, and the network's shape."""

    algo: Literal["drqn", "ppo"]
    """Algorithm: recurrent Q-learning (drqn) or recurrent PPO (ppo)."""
    env: str
    """Gymnasium environment id, e.g. rnnpolicy/TMaze-v0, CartPole-v1 or module:EnvId."""
    out: str
    """Run directory: checkpoint.pt, metrics.csv and learning_curve.png are written here."""
    total_steps: int | None = None
    """Environment steps to train for (default: the algorithm's default for the environment)."""
    seed: int = 1
    """Random seed; a run is deterministic given the seed (on the CPU)."""
    cell: Literal["lstm", "gru"] = "lstm"
    """Recurrent cell."""
    hidden_size: int | None = None
    """Units in the encoder and the recurrent layer (default: the algorithm's default for the environment)."""
    num_layers: int = 1
    """Stacked recurrent layers."""
    feedforward: bool = False
    """Replace the recurrence by a feed-forward layer (the memory ablation)."""
    image_encoder: Literal["cnn", "flatten"] = "cnn"
    """How a rank-3 Box (image) observation is read: convolutions (cnn) or flattened into the MLP encoder."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks cuda when available, else cpu."""
    threads: int = 1
    """Torch intra-op threads; 1 is fastest for small recurrent nets on a small machine."""
    tensorboard: bool = False
    """Also write TensorBoard event files to RUN_DIR/tensorboard (needs the tensorboard package)."""
    progress: bool = True
    """Show a progress bar with the running return on stderr."""

    def __post_init__(self) -> None:
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @property
    def cell_kind(self) -> str:
        """The cell the model is built with: ``ff`` for the feed-forward ablation."""
        return "ff" if self.feedforward else self.cell
