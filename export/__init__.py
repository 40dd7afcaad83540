"""Export a checkpoint to ONNX and torch.export (and AOTInductor) with explicit recurrent state, and verify parity.

Importing this package does not import torch: ``load_onnx_policy`` and the interface helpers
are torch-free (the server uses them), and the torch-using functions import their modules
when called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rnnpolicy.export.interface import TensorInfo, graph_inputs, graph_outputs
from rnnpolicy.export.runtime import feed_runner, load_onnx_policy, session_options, zero_state

if TYPE_CHECKING:
    from rnnpolicy.export.exporter import ExportReport, export_checkpoint
    from rnnpolicy.export.verify import VerifyReport, verify_export

__all__ = [
    "ExportReport",
    "TensorInfo",
    "VerifyReport",
    "export_checkpoint",
    "feed_runner",
    "graph_inputs",
    "graph_outputs",
    "load_onnx_policy",
    "session_options",
    "verify_export",
    "zero_state",
]


# The torch-using entry points load on first use (PEP 562), so this package stays torch-free.
_LAZY = {
    "export_checkpoint": "rnnpolicy.export.exporter",
    "ExportReport": "rnnpolicy.export.exporter",
    "verify_export": "rnnpolicy.export.verify",
    "VerifyReport": "rnnpolicy.export.verify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
