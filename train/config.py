"""The options every training run shares; each algorithm adds its own dataclass (``PPOConfig``, ``DRQNConfig``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rnnpolicy.spec import LmuSpec


@dataclass
class TrainConfig:
    """What to train, where to write it, and the network's shape."""

    algo: Literal["drqn", "ppo"]
    """Algorithm: recurrent Q-learning (drqn) or recurrent PPO (ppo)."""
    env: str
    """Gymnasium environment id, e.g. rnnpolicy/TMaze-v0, CartPole-v1 or module:EnvId."""
    out: str
    """Run directory: checkpoint.pt (best evaluated policy), last.pt (final policy), metrics.csv and learning_curve.png."""
    wrapper: tuple[str, ...] = ()
    """Wrap the environment: module:Callable or module:Callable:key=value,key2=value (repeatable, applied in order; recorded in the checkpoint)."""
    total_steps: int | None = None
    """Environment steps to train for (default: the environment's entry, else 100000)."""
    seed: int = 1
    """Random seed; a run is deterministic given the seed (on the CPU)."""
    cell: Literal["lstm", "gru", "lmu"] | None = None
    """Recurrent cell: lstm, gru or lmu (a Legendre memory unit: a fixed memory of the last --lmu-theta steps, for recall over a known distance; default: the environment's entry, else the algorithm's defaults for images of codes, else lstm)."""
    lmu_theta: float | None = None
    """lmu: the memory's window in steps; it must cover the longest distance to recall (default: 32)."""
    lmu_order: int | None = None
    """lmu: Legendre coefficients kept per memory input; more resolve the window more finely (default: 32)."""
    lmu_memory_inputs: int | None = None
    """lmu: learned projections of the cell's input that the memory keeps a window of (default: 2)."""
    hidden_size: int | None = None
    """Units in the encoder and the recurrent layer (default: the environment's entry, else 64)."""
    num_layers: int = 1
    """Stacked recurrent layers."""
    feedforward: bool = False
    """Replace the recurrence by a feed-forward layer (the memory ablation)."""
    image_encoder: Literal["cnn", "flatten"] = "cnn"
    """How a rank-3 Box (image) observation is read: convolutions (cnn) or flattened into the MLP encoder."""
    image_scale: float | None = None
    """Multiply an image observation of intensities by this before the convolutions (default: 1/255 for a uint8 image whose first observation reaches 32, else 1)."""
    image_codes: int | None = None
    """Read each channel of an image observation one-hot over the values 0 .. image_codes - 1 (a value outside reads as all zeros): for grids of category indices, such as MiniGrid's object, colour and state codes (default: 32 for a uint8 image whose first observation stays below 32, else 0: intensities, scaled by image_scale)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks cuda when available, else cpu."""
    threads: int = 1
    """Torch intra-op threads; 1 is fastest for small recurrent nets on a small machine."""
    tensorboard: bool = False
    """Also write TensorBoard event files to RUN_DIR/tensorboard (needs the tensorboard package)."""
    progress: bool = True
    """Show a progress bar with the running and evaluation returns on stderr."""
    vector_env: Literal["sync", "async"] = "sync"
    """Step the environments in this process (sync) or one worker process each (async: for environments whose step is costly)."""
    eval_every: int | None = None
    """Evaluate deterministically every this many environment steps; checkpoint.pt keeps the best policy (0: never; default: the environment's entry, else total_steps / 20)."""
    eval_episodes: int | None = None
    """Episodes per evaluation during training (default: the environment's entry, else 10)."""
    eval_seed: int = 1_000_000
    """Seed of the first evaluation episode during training (apart from `rnnpolicy eval`'s default 10000, so that eval stays a held-out check)."""
    eval_max_share: float | None = None
    """Largest share of the wall time evaluations may take: an evaluation due sooner waits, the final one always runs (default: the environment's entry, else 0.1; inf: no cap, so the steps evaluated, and so the run, depend on the seed alone, not on timing)."""
    target_return: float | None = None
    """Stop once an evaluation's mean return reaches this (default: the environment's entry, else none; inf disables an entry's)."""
    confirm_episodes: int | None = None
    """An evaluation that reaches target_return plays this many more episodes (the next seeds) and the run stops only if the mean over all of them still reaches it; a few lucky episodes then cannot end a run (default: twice eval_episodes; 0: stop on the evaluation alone)."""
    init_from: str | None = None
    """Start the network from this checkpoint's weights (an earlier run's checkpoint.pt or last.pt) to continue or fine-tune it; the network and spaces must match, and the optimiser, learning-rate schedule and step count start afresh."""

    def __post_init__(self) -> None:
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.image_scale is not None and not (0.0 < self.image_scale < math.inf):
            raise ValueError(f"image_scale must be a finite number > 0, got {self.image_scale}")
        if self.image_codes is not None and self.image_codes < 0:
            raise ValueError(f"image_codes must be >= 0 (0: read the image as intensities), got {self.image_codes}")
        if self.image_codes and self.image_scale is not None:
            raise ValueError(
                f"image_scale {self.image_scale:g} has nothing to scale: image_codes {self.image_codes} reads "
                f"the image one-hot; leave one of them unset"
            )
        lmu_given = {name: value for name, value in (("lmu_theta", self.lmu_theta), ("lmu_order", self.lmu_order),
                     ("lmu_memory_inputs", self.lmu_memory_inputs)) if value is not None}
        if lmu_given and self.cell != "lmu":
            got = f"got cell {self.cell!r}" if self.cell else "but cell is unset: give cell 'lmu'"
            raise ValueError(f"{', '.join(lmu_given)} set the Legendre memory of cell 'lmu', {got}")
        if self.lmu_theta is not None and not (0.0 < self.lmu_theta < math.inf):
            raise ValueError(f"lmu_theta must be a finite number of steps > 0, got {self.lmu_theta}")
        for name in ("lmu_order", "lmu_memory_inputs"):
            if lmu_given.get(name, 1) < 1:
                raise ValueError(f"{name} must be >= 1, got {lmu_given[name]}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.eval_every is not None and self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: no evaluation), got {self.eval_every}")
        if self.eval_episodes is not None and self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")
        if self.eval_max_share is not None and not (0.0 < self.eval_max_share <= 1.0 or self.eval_max_share == math.inf):
            raise ValueError(f"eval_max_share must lie in (0, 1] or be inf (no cap), got {self.eval_max_share}")
        if self.confirm_episodes is not None and self.confirm_episodes < 0:
            raise ValueError(f"confirm_episodes must be >= 0 (0: no confirmation), got {self.confirm_episodes}")
        if self.target_return is not None and self.eval_every == 0:
            raise ValueError(f"target_return={self.target_return} needs evaluation, got eval_every=0")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise ValueError(f"init_from must be a checkpoint file (RUN_DIR/checkpoint.pt or last.pt), got {self.init_from!r}")
        self.wrapper = tuple(self.wrapper)

    @property
    def evaluates(self) -> bool:
        """Whether this run evaluates during training (``eval_every`` resolved and not 0)."""
        return bool(self.eval_every)

    @property
    def cell_kind(self) -> str:
        """The cell the model is built with: ``ff`` for the feed-forward ablation."""
        return "ff" if self.feedforward else self.cell

    @property
    def lmu_spec(self) -> LmuSpec | None:
        """The Legendre memory of an ``lmu`` cell, unset settings at their defaults; ``None`` for other cells."""
        if self.cell_kind != "lmu":
            return None
        given = {"theta": self.lmu_theta, "order": self.lmu_order, "memory_inputs": self.lmu_memory_inputs}
        return LmuSpec(**{name: value for name, value in given.items() if value is not None})
