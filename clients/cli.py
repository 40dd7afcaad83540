"""``rnnpolicy play``: drive a gymnasium environment through a server and print the episodes' returns."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from rnnpolicy.clients._channel import TOKEN_ENV, resolve_token
from rnnpolicy.clients._client import PolicyClient
from rnnpolicy.clients._errors import PolicyError
from rnnpolicy.clients._protocol import TRANSPORTS

__all__ = ["PlayResult", "add_play_arguments", "play_episodes", "run_play"]


def add_play_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    parser.add_argument("--target", default="127.0.0.1:50051", help="server HOST:PORT (default %(default)s)")
    parser.add_argument("--model", default="", help="served model name (default: the server's only model)")
    parser.add_argument("--env", default=None,
                        help="gymnasium environment id, e.g. rnnpolicy/TMaze-v0 (default: the one the served policy was trained on)")
    parser.add_argument("--wrapper", action="append", default=None, metavar="MODULE:CALLABLE[:KEY=VALUE,...]",
                        help="wrap the environment (repeatable, in order; default: the wrappers the served model "
                             "was trained with, from its spec)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to play (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="episode i resets the env with seed+i (default %(default)s)")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of the greedy ones")
    parser.add_argument("--transport", choices=TRANSPORTS, default="stream",
                        help="how steps travel: over a stream of the session's own, or as unary Step calls "
                             "(default %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default %(default)s)")
    security = parser.add_argument_group("security", "token and TLS for a server started with --auth-tokens/--tls-*")
    security.add_argument("--token-file", metavar="FILE",
                          help=f"file holding the bearer token alone (default: ${TOKEN_ENV} when set)")
    security.add_argument("--token", help=f"the bearer token itself (visible in shell history and ps; prefer "
                                           f"--token-file or ${TOKEN_ENV})")
    security.add_argument("--tls", action="store_true", help="connect with TLS, verifying the server with the "
                                                             "system's CA certificates (implied by --tls-ca)")
    security.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, verifying the server with this CA")
    security.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS (needs --tls-key)")
    security.add_argument("--tls-key", metavar="PEM", help="the client certificate's unencrypted private key")


@dataclass
class PlayResult:
    """What :func:`play_episodes` saw: each episode's return and success, each step's round trip."""

    returns: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    step_latencies_s: list[float] = field(default_factory=list)

    def latency_percentiles_ms(self, percentiles: tuple[float, ...] = (50, 90, 99)) -> dict[float, float]:
        return {p: float(np.percentile(self.step_latencies_s, p)) * 1e3 for p in percentiles}


def play_episodes(client: PolicyClient, model: str, env_id: str | None, episodes: int, seed: int = 0,
                  deterministic: bool = True, transport: str = "stream",
                  wrappers: list[str] | None = None) -> PlayResult:
    """Play ``episodes`` of ``env_id`` through one server session, timing every step's round trip.

    ``env_id`` and ``wrappers`` (``module:Callable[:key=value,...]``) default to the ones in the served
    model's spec; ``ValueError`` where the environment does not fit the policy.
    """
    from rnnpolicy.envs import check_fits, make_env

    result = PlayResult()
    env = None
    try:
        with client.session(model, seed=seed, deterministic=deterministic, transport=transport) as session:
            env_id = env_id or session.spec.env_id
            if not env_id:
                raise ValueError("the served policy names no environment; pass one with --env")
            wrappers = list(session.spec.env_wrappers) if wrappers is None else wrappers
            env = make_env(env_id, wrappers)
            check_fits(session.spec, env, env_id, wrappers)
            action_space = session.spec.action
            for episode in range(episodes):
                obs, _ = env.reset(seed=seed + episode)
                start, done, total = True, False, 0.0
                while not done:
                    sent = time.perf_counter()
                    action = session.step(obs, episode_start=start).action
                    result.step_latencies_s.append(time.perf_counter() - sent)
                    start = False
                    obs, reward, terminated, truncated, info = env.step(action_space.to_env(action))
                    total += float(reward)
                    done = terminated or truncated
                result.returns.append(total)
                if "is_success" in info:
                    result.successes.append(bool(info["is_success"]))
    finally:
        if env is not None:
            env.close()
    return result


def run_play(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise ValueError(f"--episodes {args.episodes}: expected >= 1")
    if ":" not in args.target:
        raise ValueError(f"--target {args.target!r}: expected HOST:PORT")
    token = resolve_token(args.token, args.token_file)
    with PolicyClient(args.target, timeout=args.timeout, token=token, tls=args.tls, tls_ca=args.tls_ca,
                      tls_cert=args.tls_cert, tls_key=args.tls_key) as client:
        try:
            result = play_episodes(client, args.model, args.env, args.episodes, args.seed,
                                   not args.stochastic, args.transport, args.wrapper)
        except PolicyError as exc:
            raise ValueError(f"server {args.target}: {exc}") from None
    for i, total in enumerate(result.returns):
        print(f"episode {i}: return {total:g}")
    summary = f"mean return over {len(result.returns)} episodes: {float(np.mean(result.returns)):g}"
    if result.successes:
        summary += f", success rate {float(np.mean(result.successes)):g}"
    print(summary)
    latency = result.latency_percentiles_ms()
    print(
        f"{len(result.step_latencies_s)} steps, round-trip latency p50 {latency[50]:.3f} ms, "
        f"p90 {latency[90]:.3f} ms, p99 {latency[99]:.3f} ms"
    )
    return 0
