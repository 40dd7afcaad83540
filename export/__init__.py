"""Export a checkpoint to ONNX and TorchScript with explicit recurrent state, and verify parity.

Importing this package does not import torch: ``load_onnx_policy`` and the interface helpers
are torch-free (the server uses them), and the torch-using functions import their modules
when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rnnpolicy.export.interface import TensorInfo, graph_inputs, graph_outputs
from rnnpolicy.export.runtime import load_onnx_policy, session_options, zero_state

if TYPE_CHECKING:
    from rnnpolicy.export.exporter import ExportReport
    from rnnpolicy.export.verify import VerifyReport

__all__ = [
    "TensorInfo",
    "export_checkpoint",
    "graph_inputs",
    "graph_outputs",
    "load_onnx_policy",
    "session_options",
    "verify_export",
    "zero_state",
]


def export_checkpoint(
    checkpoint_path: str | Path, out_dir: str | Path, opset: int | None = None, verify: bool = True
) -> ExportReport:
    """Write ``model.onnx``, ``model.ts``, ``spec.json`` and ``verify.json``; see :mod:`rnnpolicy.export.exporter`."""
    from rnnpolicy.export.exporter import export_checkpoint as _export

    return _export(checkpoint_path, out_dir, opset=opset, verify=verify)


def verify_export(
    export_dir: str | Path,
    checkpoint: str | Path | None = None,
    steps: int = 200,
    batch_sizes: tuple[int, ...] = (1, 3, 64),
    tolerance: float = 1e-4,
    seed: int = 0,
) -> VerifyReport:
    """Check PyTorch/TorchScript/onnxruntime parity of an export and write ``verify.json``; see :mod:`rnnpolicy.export.verify`."""
    from rnnpolicy.export.verify import verify_export as _verify

    return _verify(export_dir, checkpoint, steps, batch_sizes, tolerance, seed)
