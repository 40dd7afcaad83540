"""The onnxruntime runner: one exported policy file, one batched recurrent step per call.

Torch-free. The graph contract (see :mod:`rnnpolicy.spec`): inputs ``obs`` ``[batch, obs_dim]``,
``episode_start`` ``[batch]``, ``state_h`` (and ``state_c`` for LSTM) ``[layers, batch, hidden]``;
outputs ``spec.output_names``: the head (``q_values`` or ``logits`` or ``mean``, ``log_std``),
``action``, ``value`` where the model has one, then ``next_state_h`` (``next_state_c``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnpolicy.export.interface import ONNX_FILE
from rnnpolicy.export.runtime import feed_runner, load_onnx_policy

__all__ = ["OnnxBackend", "StepOutputs", "file_version", "load_backend", "resolve_model_file"]


@dataclass(frozen=True)
class StepOutputs:
    """One batched step's results: ``head`` maps output name to ``[batch, ...]``; ``state`` the next state."""

    head: dict[str, np.ndarray]
    """Every non-state output by graph name (``q_values``, ``action``, ``value``, ...)."""
    state: tuple[np.ndarray, ...]
    """Next state tensors in graph order, each ``(layers, batch, hidden)``."""


class OnnxBackend:
    """An onnxruntime session over one exported policy, with its spec and a content version."""

    def __init__(self, path: str | Path, *, intra_op_threads: int = 1) -> None:
        model_path = resolve_model_file(Path(path))
        # The export stage's torch-free loader: sequential, ORT_ENABLE_ALL, checks the graph against its spec.
        session, self.spec = load_onnx_policy(model_path, threads=intra_op_threads)
        self.path = model_path
        self.version = file_version(model_path)
        self._state_names = tuple(s.name for s in self.spec.state_tensors)
        self._head_names = tuple(n for n in self.spec.output_names if not n.startswith("next_"))
        self._run_feed = feed_runner(session, [*self._head_names, *("next_" + n for n in self._state_names)])

    @property
    def head_names(self) -> tuple[str, ...]:
        """The non-state outputs in graph order, e.g. ``("logits", "action", "value")``."""
        return self._head_names

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state inputs in graph order, e.g. ``("state_h", "state_c")``."""
        return self._state_names

    def run_values(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One step from complete ``feeds`` (``obs``, ``episode_start`` and every state input): the head
        outputs in :attr:`head_names` order, then the next state tensors. The serving hot path."""
        return self._run_feed(feeds)

    def run(self, obs: np.ndarray, episode_start: np.ndarray, state: tuple[np.ndarray, ...]) -> StepOutputs:
        """One step for ``batch`` rows: ``obs`` ``[batch, obs_dim]`` float32, ``episode_start`` ``[batch]``."""
        feeds = {"obs": obs, "episode_start": episode_start}
        feeds.update(zip(self._state_names, state))
        values = self.run_values(feeds)
        n_head = len(self._head_names)
        return StepOutputs(dict(zip(self._head_names, values[:n_head])), tuple(values[n_head:]))


def file_version(path: Path) -> str:
    """A model file's version: the first 12 hex digits of its content's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_backend(path: str | Path, *, intra_op_threads: int = 1) -> OnnxBackend:
    """Load an export directory (its ``model.onnx``) or a ``.onnx`` file; ``ValueError`` naming the path if unusable."""
    return OnnxBackend(path, intra_op_threads=intra_op_threads)


def resolve_model_file(path: Path) -> Path:
    """The ``model.onnx`` of an export directory, or ``path`` itself when it is a file; ``ValueError`` otherwise."""
    if path.is_dir():
        model = path / ONNX_FILE
        if not model.is_file():
            raise ValueError(f"export directory {str(path)!r} has no {ONNX_FILE}")
        return model
    if path.is_file():
        return path
    raise ValueError(f"model path {str(path)!r} does not exist (expected an export directory or a .onnx file)")
