"""Evaluation during training: when to evaluate, and which policy ``checkpoint.pt`` keeps.

Every ``eval_every`` environment steps the trainer's policy plays ``eval_episodes`` deterministic
episodes on environments of its own (seeds from ``eval_seed``, apart from the training seeds and
from ``rnnpolicy eval``'s). An evaluation that would take the evaluations past ``eval_max_share``
of the run's wall time waits until training has run long enough, so which steps are evaluated
can depend on the machine's speed; with ``eval_max_share`` inf they depend on the seed alone and a
run repeats exactly (unset, :func:`rnnpolicy.train.api.resolve` gives it the environment's entry, else 0.1). The final one always runs.
An evaluation that reaches ``target_return`` plays ``confirm_episodes`` more episodes (the seeds after
its own) and counts as the mean over all of them, so the run stops only where that mean holds.
``checkpoint.pt`` is rewritten whenever an evaluation matches or beats the best so far (a later
policy wins a tie), ``last.pt`` holds the final policy; a run without evaluation writes the final
policy to both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnpolicy.spec import PolicySpec
from rnnpolicy.train.checkpoint import CHECKPOINT_NAME, LAST_NAME, save_checkpoint
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.evaluate import EvalResult, evaluate_model

__all__ = ["BestScore", "EvalSchedule", "TrainingEvaluator", "Snapshot", "reaches"]

Snapshot = Callable[[], tuple[PolicySpec, torch.nn.Module]]
"""Returns the policy as it stands, on the CPU, with the spec to save it under."""


EVAL_WIDTH_MAX = 64
"""An evaluation plays up to this many episodes side by side, so one of 20 lasts as long as its longest
episode, not two waves of 16 and 4 (an episode's return does not depend on its slot: seeds go by episode)."""


@dataclass
class BestScore:
    """The best evaluation so far; a later evaluation that matches it takes its place."""

    mean_return: float = -math.inf
    step: int | None = None

    def offer(self, step: int, mean_return: float) -> bool:
        """Record an evaluation; True when it is the new best."""
        if math.isnan(mean_return) or mean_return < self.mean_return:
            return False
        self.mean_return, self.step = mean_return, step
        return True


@dataclass
class EvalSchedule:
    """Due every ``every`` steps, unless the evaluations' time would pass ``max_share`` of the wall time (inf: never)."""

    every: int
    max_share: float = math.inf
    next_step: int = 0

    def __post_init__(self) -> None:
        self.next_step = self.every

    def due(self, step: int, elapsed_s: float, spent_s: float, last_cost_s: float) -> bool:
        """Whether to evaluate at ``step``: ``spent_s`` evaluating so far, ``last_cost_s`` the last one's cost."""
        if self.every <= 0 or step < self.next_step:
            return False
        return self.max_share == math.inf or spent_s + last_cost_s <= self.max_share * elapsed_s

    def done(self, step: int) -> None:
        """An evaluation ran at ``step``: the next is due ``every`` steps later."""
        self.next_step = step + self.every


class TrainingEvaluator:
    """Runs the evaluations of one training run and writes its ``checkpoint.pt`` and ``last.pt``.

    ``write=False`` (a data-parallel run's ranks other than 0) evaluates nothing and writes nothing.
    """

    def __init__(
        self,
        config: TrainConfig,
        record: dict[str, Any],
        *,
        write: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        evaluate: Callable[..., EvalResult] = evaluate_model,
        note: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.config = config
        self.record = record
        self.write = write
        self.out_dir = Path(config.out)
        self._clock = clock
        self._evaluate = evaluate
        self._note = note
        self._start = clock()
        self.schedule = EvalSchedule(config.eval_every or 0, math.inf if config.eval_max_share is None else config.eval_max_share)
        self.best = BestScore()
        self.eval_time = 0.0
        self._last_cost = 0.0
        self.last_result: EvalResult | None = None
        self._last_step: int | None = None
        self._row: dict[str, float] = {}
        self.reached_target = False

    @property
    def enabled(self) -> bool:
        return self.write and self.config.evaluates

    def maybe_evaluate(self, step: int, snapshot: Snapshot, *, final: bool = False) -> EvalResult | None:
        """Evaluate when due (always when ``final``); save ``checkpoint.pt`` on a new best."""
        self._row = {}
        if not self.enabled or step == self._last_step:
            return None
        if not final and not self.schedule.due(step, self._clock() - self._start, self.eval_time, self._last_cost):
            return None
        began = self._clock()
        spec, model = snapshot()
        episodes, seed, target = self.config.eval_episodes, self.config.eval_seed, self.config.target_return
        assert episodes is not None
        result = self._play(model, spec, episodes, seed)
        if target is not None and reaches(result.mean_return, target) and self.config.confirm_episodes:
            first = result
            result = first.extended(self._play(model, spec, self.config.confirm_episodes, seed + episodes))
            if not reaches(result.mean_return, target):
                self._note(f"evaluation at step {step} reached the target {target:g} on its {first.episodes} episodes "
                           f"({first.mean_return:.3f}) but not over {result.episodes} with the {self.config.confirm_episodes} "
                           f"confirming ones ({result.mean_return:.3f}): training on")
        if self.best.offer(step, result.mean_return):
            save_checkpoint(self.out_dir / CHECKPOINT_NAME, spec, model, self._record(step, result))
        self._last_cost = self._clock() - began
        self.eval_time += self._last_cost
        self.schedule.done(step)
        self.last_result, self._last_step = result, step
        self._row = {"eval_return": result.mean_return, "eval_success_rate": _or_nan(result.success_rate)}
        self.reached_target = target is not None and reaches(result.mean_return, target)
        return result

    def _play(self, model: torch.nn.Module, spec: PolicySpec, episodes: int, seed: int) -> EvalResult:
        return self._evaluate(model, spec, self.config.env, episodes=episodes, seed=seed,
                              batch=min(episodes, EVAL_WIDTH_MAX), wrappers=self.config.wrapper)

    def stop_note(self, step: int) -> str:
        """The run's last line when an evaluation at ``step`` reached the target."""
        assert self.last_result is not None
        return (f"stopping early at step {step}: evaluation return {self.last_result.mean_return:.3f} over "
                f"{self.last_result.episodes} episodes reached the target {self.config.target_return:g}")

    def row(self) -> dict[str, float]:
        """The metrics.csv columns of the step just offered: NaN where no evaluation ran."""
        return {
            "eval_return": self._row.get("eval_return", math.nan),
            "eval_success_rate": self._row.get("eval_success_rate", math.nan),
            "best_eval_return": self.best.mean_return if self.best.step is not None else math.nan,
            "eval_time": self.eval_time,
        }

    def postfix(self) -> dict[str, str]:
        """Progress-bar fields: the latest and the best evaluation return."""
        if self.last_result is None:
            return {}
        return {"eval": f"{self.last_result.mean_return:.2f}", "best": f"{self.best.mean_return:.2f}"}

    def finish(self, spec: PolicySpec, model: torch.nn.Module) -> Path:
        """Write ``last.pt`` (and ``checkpoint.pt`` when nothing was evaluated); returns checkpoint.pt's path."""
        checkpoint = self.out_dir / CHECKPOINT_NAME
        if not self.write:
            return checkpoint
        save_checkpoint(self.out_dir / LAST_NAME, spec, model, self._record(self._last_step, self.last_result))
        if self.best.step is None:
            save_checkpoint(checkpoint, spec, model, self._record(None, None))
        return checkpoint

    def _record(self, step: int | None, result: EvalResult | None) -> dict[str, Any]:
        evaluation = None if result is None else {"step": step, **result.to_dict()}
        return {**self.record, "evaluation": evaluation}


def reaches(mean_return: float, target: float) -> bool:
    """``mean_return >= target``, up to float rounding: on MemoryGrid a perfect policy returns 0.95 per episode,
    and the mean of 96 such returns is 0.9499999999999998."""
    return mean_return >= target or math.isclose(mean_return, target, rel_tol=1e-9, abs_tol=1e-12)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value
