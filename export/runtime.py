"""Load an exported ``model.onnx`` into onnxruntime, torch-free (the server imports this).

The session is set up for low-latency single-step calls: one intra-op thread by default,
sequential execution and full graph optimisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnpolicy.export.interface import graph_inputs
from rnnpolicy.spec import SPEC_METADATA_KEY, PolicySpec

__all__ = ["FeedRunner", "feed_runner", "load_onnx_policy", "read_onnx_spec", "session_options", "zero_state"]


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Session options for per-step latency: ``threads`` intra-op threads, sequential, all graph optimisations."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def load_onnx_policy(path: str | Path, threads: int = 1) -> tuple[ort.InferenceSession, PolicySpec]:
    """Open ``model.onnx`` and read its embedded spec; ``ValueError`` naming the file if either is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ONNX model {str(path)!r} does not exist")
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for damaged files
        raise ValueError(f"{str(path)!r} is not a loadable ONNX model: {exc}") from None
    spec = read_onnx_spec(session, path)
    _check_interface(session, spec, path)
    return session, spec


def read_onnx_spec(session: ort.InferenceSession, path: str | Path = "<session>") -> PolicySpec:
    """The policy spec stored in the model's ``metadata_props`` under ``rnnpolicy.spec``."""
    metadata = session.get_modelmeta().custom_metadata_map
    if SPEC_METADATA_KEY not in metadata:
        raise ValueError(
            f"{str(path)!r} has no {SPEC_METADATA_KEY!r} metadata: not exported by rnnpolicy "
            f"(found keys {sorted(metadata)})"
        )
    try:
        return PolicySpec.from_json(metadata[SPEC_METADATA_KEY])
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: {exc}") from None


FeedRunner = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]
"""One step from a complete feed (every graph input by name) to the requested outputs, in order."""


def feed_runner(session: ort.InferenceSession, output_names: Sequence[str]) -> FeedRunner:
    """``session.run(output_names, feed)`` without the Python-side feed check, for per-step hot paths.

    ``InferenceSession.run`` looks up every input's and output's name and type through the
    C++ bindings on each call to validate the feed: about 6 us of a 40 us batch-1 step of a
    128-unit LSTM (``benchmarks/export_bench.py``). Callers here build the feed from the spec,
    which :func:`load_onnx_policy` checked against the graph once, and onnxruntime's C++ core
    still rejects a missing input or a wrong dtype or shape. Falls back to ``session.run`` on
    an onnxruntime without the ``_sess`` binding object.
    """
    names = list(output_names)
    binding = getattr(session, "_sess", None)
    if binding is None or not hasattr(binding, "run"):
        return lambda feed: session.run(names, dict(feed))
    run = binding.run
    return lambda feed: run(names, feed, None)


def zero_state(spec: PolicySpec, batch: int) -> dict[str, np.ndarray]:
    """The initial (all-zero) state inputs for ``batch`` rows, by input name."""
    return {s.name: np.zeros((s.layers, batch, s.hidden), dtype=np.float32) for s in spec.state_tensors}


def _check_interface(session: ort.InferenceSession, spec: PolicySpec, path: Path) -> None:
    """The graph's inputs and outputs must be the ones its spec promises."""
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if inputs != spec.input_names or outputs != spec.output_names:
        raise ValueError(
            f"{str(path)!r}: graph inputs {inputs} and outputs {outputs} do not match its spec, "
            f"which expects inputs {spec.input_names} and outputs {spec.output_names}"
        )
    for info, actual in zip(graph_inputs(spec), session.get_inputs()):
        expected = [d for d in info.shape if isinstance(d, int)]
        fixed = [d for d in actual.shape if isinstance(d, int)]
        if fixed != expected or len(actual.shape) != len(info.shape):
            raise ValueError(
                f"{str(path)!r}: input {info.name!r} has shape {actual.shape}, its spec expects {list(info.shape)}"
            )
