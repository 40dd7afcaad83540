"""What a training run reports: progress bar, ``metrics.csv``, ``learning_curve.png``, optional TensorBoard."""

from __future__ import annotations

import csv
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

METRICS_NAME = "metrics.csv"
CURVE_NAME = "learning_curve.png"


class EpisodeTracker:
    """Sums rewards per vector-env row and records each finished episode's return, length and success."""

    def __init__(self, num_envs: int, window: int = 100) -> None:
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self.recent_returns: deque[float] = deque(maxlen=window)
        self.recent_successes: deque[float] = deque(maxlen=window)
        self.episodes = 0

    def update(self, rewards: np.ndarray, dones: np.ndarray, infos: dict[str, Any]) -> list[float]:
        """Add one vector step; returns the returns of the episodes that ended on it.

        ``infos`` is the vector env's info dict; with same-step autoreset the ended episodes'
        infos (``is_success``) are under ``final_info``.
        """
        infos = infos.get("final_info", infos)
        self._returns += rewards
        self._lengths += 1
        finished = []
        success = infos.get("is_success")
        success_mask = infos.get("_is_success")
        for i in np.flatnonzero(dones):
            finished.append(float(self._returns[i]))
            self.recent_returns.append(float(self._returns[i]))
            if success is not None and (success_mask is None or success_mask[i]):
                self.recent_successes.append(float(success[i]))
            self._returns[i] = 0.0
            self._lengths[i] = 0
            self.episodes += 1
        return finished

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.recent_returns)) if self.recent_returns else float("nan")

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.recent_successes)) if self.recent_successes else float("nan")


class RunLog:
    """Writes one ``metrics.csv`` row per :meth:`log` call and keeps the progress bar current.

    Every row has ``step``, ``wall_time``, ``episodes``, ``mean_return`` and ``success_rate``
    (over the last 100 episodes), then whatever the algorithm passes (losses, epsilon, the
    evaluation columns ``eval_return``, ``eval_success_rate``, ``best_eval_return``, ...).
    ``write=False`` (a data-parallel rank other than 0) keeps the rows in memory only.
    """

    def __init__(
        self, out_dir: str | Path, total_steps: int, *, progress: bool = True, tensorboard: bool = False, write: bool = True
    ) -> None:
        self.out_dir = Path(out_dir)
        self.total_steps = total_steps
        self.write = write
        self.progress = progress and write
        self.tensorboard = tensorboard and write
        self.postfix: Callable[[], dict[str, str]] = dict
        """Extra progress-bar fields, e.g. the latest evaluation return."""
        self.start = time.perf_counter()
        self.rows: list[dict[str, float]] = []
        self._file = None
        self._writer: csv.DictWriter | None = None
        self._bar = None
        self._tb = None
        self._last_step = 0

    def _open(self, fieldnames: list[str]) -> None:
        """Create the outputs on the first row, so a run that fails to start leaves no half-drawn bar."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out_dir / METRICS_NAME, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=fieldnames, extrasaction="ignore")
        self._writer.writeheader()
        if self.progress:
            from tqdm import tqdm

            # Redraw at most once a second on a terminal, every 10 s into a log file or pipe.
            interval = 1.0 if sys.stderr.isatty() else 10.0
            self._bar = tqdm(total=self.total_steps, unit="step", dynamic_ncols=True, smoothing=0.1, mininterval=interval)
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))

    def log(self, step: int, tracker: EpisodeTracker, **metrics: float) -> None:
        row = {
            "step": step,
            "wall_time": round(time.perf_counter() - self.start, 3),
            "episodes": tracker.episodes,
            "mean_return": tracker.mean_return,
            "success_rate": tracker.success_rate,
            **{k: float(v) for k, v in metrics.items()},
        }
        self.rows.append(row)
        if not self.write:
            return
        if self._writer is None:
            self._open(list(row))
        assert self._writer is not None and self._file is not None
        self._writer.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step":
                    self._tb.add_scalar(key, value, step)
        if self._bar is not None:
            self._bar.update(step - self._last_step)
            postfix = {"return": f"{tracker.mean_return:.2f}"}
            if not np.isnan(tracker.success_rate):
                postfix["success"] = f"{tracker.success_rate:.2f}"
            postfix.update(self.postfix())
            self._bar.set_postfix(postfix, refresh=False)
        self._last_step = step

    def note(self, message: str) -> None:
        """Tell the user something about the run on stderr, without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        """Close the files and draw ``learning_curve.png`` from the logged rows."""
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
            plot_learning_curve(self.rows, self.out_dir / CURVE_NAME)


def plot_learning_curve(rows: list[dict[str, float]], path: Path) -> None:
    # A bare Figure renders with Agg without pyplot, whose import alone takes most of a second.
    from matplotlib.figure import Figure

    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, [r["mean_return"] for r in rows], label="training return (last 100 episodes)")
    evaluated = [r for r in rows if not np.isnan(r.get("eval_return", np.nan))]
    if evaluated:
        ax.plot([r["step"] for r in evaluated], [r["eval_return"] for r in evaluated], "o-", color="tab:orange",
                markersize=3, label="evaluation return (deterministic)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    handles, labels = ax.get_legend_handles_labels()
    if any(not np.isnan(r["success_rate"]) for r in rows) or any(not np.isnan(r.get("eval_success_rate", np.nan)) for r in evaluated):
        twin = ax.twinx()
        twin.plot(steps, [r["success_rate"] for r in rows], color="tab:green", alpha=0.6, label="training success rate")
        if evaluated:
            twin.plot([r["step"] for r in evaluated], [r["eval_success_rate"] for r in evaluated], "s--", color="tab:red",
                      markersize=3, label="evaluation success rate")
        twin.set_ylabel("success rate")
        twin.set_ylim(-0.05, 1.05)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize="small", loc="best")
    ax.set_title(path.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
