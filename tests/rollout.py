"""The reference every serving test compares with: the same ONNX file stepped alone, batch 1, state carried here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnpolicy.export.interface import ONNX_FILE


class OfflineRollout:
    """One session's reference: ``model.onnx`` of an export directory (or a ``.onnx`` file) stepped with batch 1."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        model_file = path / ONNX_FILE if path.is_dir() else path
        self.sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.state = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                      for i in self.sess.get_inputs() if i.name.startswith("state_")}

    def step(self, obs, start) -> dict[str, np.ndarray]:
        feeds = {"obs": np.asarray(obs, np.float32)[None], "episode_start": np.array([float(start)], np.float32),
                 **self.state}
        out = dict(zip(self.outputs, self.sess.run(None, feeds)))
        for name in self.state:
            self.state[name] = out["next_" + name]
        return out
