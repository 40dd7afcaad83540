"""Play episodes through a running server and check the returns equal an offline rollout of the same file.

    rnnpolicy serve --model tmaze=EXPORT_DIR --port 50051 &
    python examples/game_bot.py --export EXPORT_DIR --env rnnpolicy/TMaze-v0 --model tmaze --episodes 5

The offline side steps ``EXPORT_DIR/model.onnx`` with onnxruntime directly (batch 1, explicit
state, ``episode_start`` on each reset): with greedy actions both sides must see the same returns.
"""

from __future__ import annotations

import argparse

import numpy as np

from rnnpolicy.clients import PolicyClient
from rnnpolicy.clients.cli import play_episodes
from rnnpolicy.envs import make_env
from rnnpolicy.serve.backend import load_backend


def offline_returns(export_dir: str, env_id: str, episodes: int, seed: int) -> list[float]:
    backend = load_backend(export_dir)
    spec = backend.spec
    env = make_env(env_id)
    state = tuple(np.zeros((s.layers, 1, s.hidden), np.float32) for s in spec.state_tensors)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        start, done, total = 1.0, False, 0.0
        while not done:
            out = backend.run(spec.obs_encoding.encode(obs)[None], np.array([start], np.float32), state)
            state, start = out.state, 0.0
            action = out.head["action"][0]
            obs, reward, terminated, truncated, _ = env.step(spec.action.to_env(action))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--model", default="")
    parser.add_argument("--export", required=True, help="the export directory the server runs")
    parser.add_argument("--env", required=True)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with PolicyClient(args.target) as client:
        served = play_episodes(client, args.model, args.env, args.episodes, args.seed).returns
    offline = offline_returns(args.export, args.env, args.episodes, args.seed)
    for i, (a, b) in enumerate(zip(served, offline)):
        print(f"episode {i}: server {a:g}  offline {b:g}")
    same = served == offline
    print("returns match the offline rollout" if same else "MISMATCH between server and offline rollout")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
