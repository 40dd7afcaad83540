"""``train(config)``: pick the algorithm, layer its per-environment defaults, run it, save the checkpoint.

An algorithm module (``rnnpolicy.train.ppo``, ``rnnpolicy.train.drqn``) provides:

- ``Config``: a dataclass of its hyperparameters, one docstring per field;
- ``ENV_DEFAULTS``: ``{env_id: {field: value}}`` so that the defaults solve the built-in tasks
  (keys may also name ``TrainConfig`` fields such as ``total_steps``, ``hidden_size`` and ``cell``);
- ``CODE_IMAGE_DEFAULTS``: ``{field: value}`` for an environment without an entry whose image is
  read as codes (MiniGrid's grids of object, colour and state indices), in the same form;
- ``DATA_PARALLEL``: whether it runs under ``torchrun`` (:mod:`rnnpolicy.train.distributed`);
- ``learn(config, algo_config, run, evaluator) -> (spec, model)``, offering the policy to
  ``evaluator`` (:class:`~rnnpolicy.train.periodic_eval.TrainingEvaluator`) at each log row
  and stopping once ``evaluator.reached_target``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import random
import re
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from rnnpolicy.envs import make_env
from rnnpolicy.train import distributed
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.envs import CODED_IMAGE_LIMIT, action_spec, image_spec, is_coded_image, observation_encoding
from rnnpolicy.train.periodic_eval import TrainingEvaluator
from rnnpolicy.train.runlog import RunLog

ALGORITHMS: dict[str, str] = {"ppo": "rnnpolicy.train.ppo", "drqn": "rnnpolicy.train.drqn"}
# TrainConfig fields left unset (None) by the user and by the environment's entry.
FALLBACK_DEFAULTS: dict[str, Any] = {
    "total_steps": 100_000, "hidden_size": 64, "cell": "lstm", "eval_episodes": 10, "eval_max_share": 0.1,
}
EVALUATIONS_PER_RUN = 20
"""Without an entry, a run evaluates every total_steps / EVALUATIONS_PER_RUN steps."""
CONFIRM_FACTOR = 2
"""Unset, confirm_episodes is this many times eval_episodes."""


def algorithm(name: str) -> ModuleType:
    """The module of algorithm ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}: expected one of {sorted(ALGORITHMS)}")
    return importlib.import_module(ALGORITHMS[name])


def run_defaults(algo: str, env_id: str, image_codes: int | None) -> tuple[str, dict[str, Any]]:
    """The defaults layered under what the user gives, and where they come from, for the run's first lines.

    ``ENV_DEFAULTS[env_id]`` where ``algo`` has an entry; else ``CODE_IMAGE_DEFAULTS`` where the image
    is read as codes (``image_codes > 0``, as resolved); else none.
    """
    module = algorithm(algo)
    if env_id in module.ENV_DEFAULTS:
        return f"the entry for {env_id}", dict(module.ENV_DEFAULTS[env_id])
    if image_codes and module.CODE_IMAGE_DEFAULTS:
        return "the defaults for images of codes", dict(module.CODE_IMAGE_DEFAULTS)
    return "the generic defaults", {}


def resolve(config: TrainConfig, algo_overrides: dict[str, Any] | None = None) -> tuple[TrainConfig, Any]:
    """Fill unset options from the run's defaults (:func:`run_defaults`), then build the algorithm's config.

    Precedence: what the user gave, then ``ENV_DEFAULTS[env]`` (or, without an entry, the algorithm's
    ``CODE_IMAGE_DEFAULTS`` for an image read as codes), then the dataclasses' own defaults.
    """
    module = algorithm(config.algo)
    image_scale, image_codes = _check_env(config)
    source, defaults = run_defaults(config.algo, config.env, image_codes)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    filled = {key: defaults[key] for key in train_fields & defaults.keys() if getattr(config, key) is None}
    if config.eval_every == 0:  # evaluation switched off: an entry's target cannot be checked
        filled.pop("target_return", None)
    filled.update({key: value for key, value in FALLBACK_DEFAULTS.items() if getattr(config, key) is None and key not in filled})
    filled.update(image_scale=image_scale, image_codes=image_codes)
    config = dataclasses.replace(config, **filled)
    if config.eval_every is None:
        assert config.total_steps is not None
        config = dataclasses.replace(config, eval_every=max(1, config.total_steps // EVALUATIONS_PER_RUN))
    if config.confirm_episodes is None:
        assert config.eval_episodes is not None
        config = dataclasses.replace(config, confirm_episodes=CONFIRM_FACTOR * config.eval_episodes)
    given = {k: v for k, v in (algo_overrides or {}).items() if v is not None}
    from_entry = {k: v for k, v in defaults.items() if k not in train_fields and k not in given}
    try:
        return config, module.Config(**{**from_entry, **given})
    except ValueError as exc:
        named = [f"{key} {value!r}" for key, value in from_entry.items() if re.search(rf"\b{key}\b", str(exc))]
        if not named:
            raise
        raise ValueError(f"{exc} ({source} set {', '.join(named)}; a value you give overrides them)") from None


def _check_env(config: TrainConfig) -> tuple[float | None, int | None]:
    """Fail before training starts on an environment that cannot be made, wrapped, encoded or acted in (by ``algo``).

    Returns how the convolutional encoder reads the image, ``(image_scale, image_codes)``: as the
    user gave it, else by the environment's first observation (:func:`~rnnpolicy.train.envs.is_coded_image`,
    which resets it once): codes one-hot over ``CODED_IMAGE_LIMIT`` values (no scale), intensities
    scaled (codes 0). ``(None, None)`` when no image is read; a scale or codes given then are refused.
    """
    env = make_env(config.env, config.wrapper)
    try:
        try:
            observation_encoding(env)
        except ValueError as exc:
            raise ValueError(f"{exc}; a wrapper can drop or convert it (--wrapper module:Callable, e.g. "
                             f"minigrid.wrappers:ImgObsWrapper keeps MiniGrid's image alone)") from None
        action = action_spec(env)
        if config.algo == "drqn" and not action.is_discrete:
            raise ValueError(
                f"drqn needs a discrete action space, got {env.action_space} from {config.env}; "
                f"train this environment with --algo ppo"
            )
        image = image_spec(env) if config.image_encoder == "cnn" else None
        if image is None:
            reason = (f"image_encoder {config.image_encoder!r} reads no image" if config.image_encoder != "cnn"
                      else f"{config.env} observes {env.observation_space}, not an image (a rank-3 Box)")
            if config.image_scale is not None:
                raise ValueError(f"image_scale {config.image_scale:g} has nothing to scale: {reason}; leave it unset")
            if config.image_codes is not None:
                raise ValueError(f"image_codes {config.image_codes} has no image to read: {reason}; leave it unset")
            return None, None
        if config.image_codes:
            return None, config.image_codes
        if config.image_scale is not None:
            return config.image_scale, 0
        coded = is_coded_image(env, config.seed)
        if config.image_codes is None and coded:
            return None, CODED_IMAGE_LIMIT
        return (1.0 if coded else image.scale), 0  # codes read as numbers: unscaled, as 1/255 would stall learning
    finally:
        env.close()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device here")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, algo_overrides: dict[str, Any] | None = None) -> Path:
    """Train as ``config`` says and write the run directory; returns the checkpoint's path."""
    return train_resolved(*resolve(config, algo_overrides))


def train_resolved(config: TrainConfig, algo_config: Any) -> Path:
    """:func:`train` for a configuration :func:`resolve` already filled in.

    Writes ``last.pt`` and ``checkpoint.pt`` (the best evaluated policy) into the run directory.
    Under ``torchrun`` every rank trains and rank 0 alone logs, evaluates and writes.
    """
    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'rnnpolicy[tensorboard]'")
    module = algorithm(config.algo)
    world_size = distributed.launched_world_size()
    if world_size > 1 and not module.DATA_PARALLEL:
        raise ValueError(
            f"{config.algo} trains in a single process only (its replay buffer and target network are not shared), "
            f"but it was launched as {world_size} ranks (WORLD_SIZE={world_size}): run it without torchrun, "
            f"or use --algo ppo for data-parallel training"
        )
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    assert config.total_steps is not None
    dp = distributed.setup(resolve_device(config.device))
    try:
        steps = algo_config.planned_steps(config.total_steps)
        run = RunLog(config.out, steps, progress=config.progress, tensorboard=config.tensorboard, write=dp.lead)
        evaluator = TrainingEvaluator(config, {"train": asdict(config), "algo": asdict(algo_config)}, write=dp.lead, note=run.note)
        run.postfix = evaluator.postfix
        try:
            spec, model = module.learn(config, algo_config, run, evaluator)
        finally:
            run.close()
        return evaluator.finish(spec, model)
    finally:
        distributed.teardown()
