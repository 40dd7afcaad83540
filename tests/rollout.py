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


def env_rollout(export_dir: Path, env_id: str, seed: int, steps: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    """``steps`` greedy steps of ``env_id`` with the exported policy, as the web page and the README's loops run it.

    The env is reset with ``seed`` and then without one after each episode (gymnasium's generator carries on).
    Returns one record per step (the observation acted on, ``episode_start``, ``action``, ``reward``,
    ``terminated``, ``truncated``) and the state after the last step.
    """
    from rnnpolicy.envs import make_env
    from rnnpolicy.spec import PolicySpec

    spec = PolicySpec.from_json((Path(export_dir) / "spec.json").read_text())
    policy = OfflineRollout(export_dir)
    env = make_env(env_id)
    obs, _ = env.reset(seed=seed)
    episode_start = True
    trace = []
    for _ in range(steps):
        action = int(policy.step(spec.obs_encoding.encode(obs), episode_start)["action"][0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        trace.append({"obs": obs.tolist(), "episode_start": episode_start, "action": action, "reward": float(reward),
                      "terminated": terminated, "truncated": truncated})
        obs, episode_start = next_obs, False
        if terminated or truncated:
            (obs, _), episode_start = env.reset(), True
    return trace, dict(policy.state)


def first_episode(trace: list[dict]) -> tuple[bool, int]:
    """(success, steps) of the first episode in an :func:`env_rollout` trace (the T-maze pays 1.0 only for success)."""
    steps = next(t + 1 for t, step in enumerate(trace) if step["terminated"] or step["truncated"])
    return trace[steps - 1]["reward"] == 1.0, steps
