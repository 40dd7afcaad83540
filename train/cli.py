"""``rnnpolicy train`` and ``rnnpolicy eval``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

from rnnpolicy.configcli import add_dataclass_arguments, dataclass_from_args, in_option_names
from rnnpolicy.train.config import TrainConfig


def _algo_in(argv: list[str] | None) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo")
    known, _ = pre.parse_known_args(argv or [])
    return known.algo


def add_train_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    add_dataclass_arguments(parser, TrainConfig, unset_default=False)
    algo = _algo_in(argv)
    from rnnpolicy.train.api import ALGORITHMS, algorithm

    if algo not in ALGORITHMS:
        parser.epilog = "Give --algo drqn or --algo ppo with --help to list that algorithm's hyperparameters."
        return
    group = parser.add_argument_group(
        f"{algo} hyperparameters",
        "Unset options take the algorithm's per-environment defaults, then the defaults shown.",
    )
    add_dataclass_arguments(group, algorithm(algo).Config, unset_default=True)


def run_train(args: argparse.Namespace) -> int:
    from rnnpolicy.train.api import algorithm, resolve, run_defaults, train_resolved
    from rnnpolicy.train.checkpoint import LAST_NAME

    config = dataclass_from_args(TrainConfig, args)
    algo_class = algorithm(config.algo).Config
    algo_fields = {f.name for f in dataclasses.fields(algo_class)}
    overrides = {k: v for k, v in vars(args).items() if k in algo_fields and v is not None}
    try:
        resolved, algo_config = resolve(config, overrides)
    except ValueError as exc:
        raise in_option_names(exc, TrainConfig, algo_class) from exc
    lead = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if lead:
        evaluation = (
            f"evaluating {resolved.eval_episodes} episodes every {resolved.eval_every} steps"
            + (f", stopping at return {resolved.target_return:g}"
               + (f" (held over {resolved.confirm_episodes} more episodes)" if resolved.confirm_episodes else "")
               if resolved.target_return not in (None, math.inf) else "")
            if resolved.evaluates else "no evaluation during training"
        )
        planned = algo_config.planned_steps(resolved.total_steps)
        steps = f"{resolved.total_steps} steps"
        if planned != resolved.total_steps:
            steps += f" (runs {planned}: {algo_config.step_rounding})"
        print(
            f"training {resolved.algo} on {resolved.env}: {steps}, "
            f"{resolved.cell_kind} {resolved.num_layers}x{resolved.hidden_size}, seed {resolved.seed}"
            + (f", images read as codes 0-{resolved.image_codes - 1}, one-hot per channel" if resolved.image_codes
               else f", images scaled by {resolved.image_scale:.6g}" if resolved.image_scale is not None else "")
            + f"; {evaluation}",
            file=sys.stderr,
        )
        source, _ = run_defaults(resolved.algo, resolved.env, resolved.image_codes)
        if resolved.env not in algorithm(resolved.algo).ENV_DEFAULTS:
            source += f", {resolved.env} having no entry"
        print(f"{resolved.algo} hyperparameters (unset ones from {source}): {dataclasses.asdict(algo_config)}", file=sys.stderr)
    path = train_resolved(resolved, algo_config)
    if lead:
        kept = "best evaluated policy" if resolved.evaluates else "final policy: no evaluation during training"
        print(f"wrote {path} ({kept}) and {path.with_name(LAST_NAME)} (final policy)")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    parser.add_argument("checkpoint", help="Path to a checkpoint.pt written by rnnpolicy train.")
    parser.add_argument("--episodes", type=int, default=100, help="Episodes to run. (default: 100)")
    parser.add_argument("--seed", type=int, default=10_000, help="Seed of the first evaluation episode. (default: 10000)")
    parser.add_argument("--env", default=None, help="Environment id (default: the one the checkpoint was trained on).")
    parser.add_argument(
        "--wrapper", action="append", default=None, metavar="MODULE:CALLABLE[:KEY=VALUE,...]",
        help="Wrap the environment (repeatable, in order; default: the wrappers the checkpoint was trained with).",
    )
    parser.add_argument("--threads", type=int, default=1, help="Torch intra-op threads. (default: 1)")
    parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from rnnpolicy.train.evaluate import evaluate

    torch.set_num_threads(args.threads)
    result = evaluate(args.checkpoint, episodes=args.episodes, seed=args.seed, env_id=args.env, wrappers=args.wrapper)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    line = f"{result.episodes} episodes: return {result.mean_return:.3f} +/- {result.std_return:.3f}"
    if result.success_rate is not None:
        line += f", success rate {result.success_rate:.3f}"
    print(line)
    return 0
