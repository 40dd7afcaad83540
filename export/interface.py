"""The exported graph's interface, derived from the spec alone (torch-free): names, dtypes, shapes.

``"batch"`` marks the dynamic batch axis. Every exported file (ONNX, torch.export, AOTInductor,
TorchScript) and every client use this order.
"""

from __future__ import annotations

from typing import NamedTuple

from rnnpolicy.spec import (
    ACTION,
    EPISODE_START,
    LOG_STD,
    LOGITS,
    MEAN,
    OBS,
    Q_VALUES,
    VALUE,
    PolicySpec,
)

__all__ = ["AOTI_FILE", "DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "ONNX_FILE", "PROGRAM_FILE", "SPEC_FILE",
           "TORCHSCRIPT_FILE", "TensorInfo", "VERIFY_FILE", "graph_inputs", "graph_outputs"]

# An export directory's files, named here once for the exporter, the server, the clients and the tests.
ONNX_FILE = "model.onnx"
"""The ONNX graph, with the spec in its metadata (what the server loads)."""
PROGRAM_FILE = "model.pt2"
"""The ``torch.export`` program, with the spec as an extra file named ``SPEC_FILE``."""
AOTI_FILE = "model.aoti.pt2"
"""The AOTInductor package for C++ (``--aot``), with the spec in its metadata."""
TORCHSCRIPT_FILE = "model.ts"
"""The TorchScript module (``--torchscript``, deprecated by PyTorch), with the spec as an extra file named ``SPEC_FILE``."""
SPEC_FILE = "spec.json"
"""The policy spec as JSON (:class:`rnnpolicy.spec.PolicySpec`)."""
VERIFY_FILE = "verify.json"
"""The parity report of ``rnnpolicy verify``."""

DEFAULT_OPSET = 17
"""ONNX opset written unless ``--opset`` says otherwise (onnxruntime >= 1.12 runs it)."""
MIN_OPSET = 9
"""Oldest opset accepted; 9 to 21 all pass the parity check for LSTM and GRU policies."""
MAX_OPSET = 21
"""Newest opset accepted (torch's TorchScript-based exporter writes up to 21 for these graphs)."""


class TensorInfo(NamedTuple):
    """One graph input or output: ``name``, numpy ``dtype`` name, ``shape`` with ``"batch"`` for the free axis."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]
    doc: str

    def describe(self) -> str:
        """``name dtype [d0, d1]``, as the export summary prints it."""
        return f"{self.name} {self.dtype} [{', '.join(str(d) for d in self.shape)}]"


def graph_inputs(spec: PolicySpec) -> tuple[TensorInfo, ...]:
    """``obs``, ``episode_start`` and the state tensors, in graph order."""
    obs_doc = "encoded observation; normalised inside the graph"
    if spec.image is not None:
        reading = (f"each channel read one-hot over codes 0-{spec.image.codes - 1}" if spec.image.codes
                   else f"scaled by {spec.image.scale:.6g}")
        obs_doc = (f"the image {list(spec.image.shape)} ({spec.image.layout}) flattened row-major, raw values; "
                   f"{reading} and read by convolutions inside the graph")
    return (
        TensorInfo(OBS, "float32", ("batch", spec.obs_dim), obs_doc),
        TensorInfo(EPISODE_START, "float32", ("batch",), "1 zeroes that row's state before this step, 0 keeps it"),
        *(
            TensorInfo(s.name, "float32", s.shape, "recurrent state; zeros start an episode")
            for s in spec.state_tensors
        ),
    )


def graph_outputs(spec: PolicySpec) -> tuple[TensorInfo, ...]:
    """The head outputs then ``next_state_h`` (and ``next_state_c``), in graph order."""
    action = spec.action
    width = action.dim
    logits_doc = "unnormalised log-probability of each action"
    if action.is_factored:
        logits_doc = (f"unnormalised log-probabilities of each of the {action.dim} action entries, concatenated: "
                      f"entry i at columns sum(nvec[:i]) to sum(nvec[:i+1]), nvec={list(action.nvec)}")
    heads = {
        Q_VALUES: TensorInfo(Q_VALUES, "float32", ("batch", action.num_logits), "Q-value of each action"),
        LOGITS: TensorInfo(LOGITS, "float32", ("batch", action.num_logits), logits_doc),
        MEAN: TensorInfo(MEAN, "float32", ("batch", width), "mean of the Gaussian policy (before bounds)"),
        LOG_STD: TensorInfo(LOG_STD, "float32", ("batch", width), "log standard deviation of the Gaussian policy"),
        VALUE: TensorInfo(VALUE, "float32", ("batch",), "state value estimate"),
    }
    if action.is_discrete:
        heads[ACTION] = TensorInfo(ACTION, "int64", ("batch",), "greedy (most likely) action")
    elif action.is_factored:
        heads[ACTION] = TensorInfo(ACTION, "int64", ("batch", width),
                                   f"most likely value of each entry, row-major from the action shape {list(action.shape)}")
    else:
        heads[ACTION] = TensorInfo(ACTION, "float32", ("batch", width), "mean mapped into the action bounds")
    states = tuple(
        TensorInfo("next_" + s.name, "float32", s.shape, "state to feed to the next step") for s in spec.state_tensors
    )
    return tuple(heads[name] for name in spec.output_names[: -len(states)]) + states
