"""What else the machine was doing while a benchmark ran: load average and hypervisor steal, its CPU, and its speed.

On a VM, "steal" is the time the hypervisor gave this guest's vCPUs to other guests; while it
is high, every figure here is slower (2x swings within minutes were seen on the 2-core VMs).
The same VM also changes speed with its neighbours (seed 2 of CartPoleNoVel trained at 2,087 steps/s alone, and a
quarter of an hour later at 3,851 beside another training run), and VMs that report the same CPU model differ too,
so each results file records how long a fixed reference workload took, before and after the run.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

__all__ = ["RunConditions", "cpu", "cpu_ticks", "describe", "loadavg", "reference_ms", "steal_pct"]


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7], sum(fields)


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Percent of CPU time stolen by the hypervisor between two :func:`cpu_ticks` readings."""
    return round(100 * (after[0] - before[0]) / max(1, after[1] - before[1]), 1)


def cpu() -> str:
    """The CPU's model name and its AVX extensions, from /proc/cpuinfo ("unknown" elsewhere).

    A run that is deterministic given its seed repeats only on the same instruction sets: PyTorch's
    kernels may round differently with and without AVX-512, and a training run's course then diverges.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    avx = sorted(flag for flag in fields.get("flags", "").split() if flag.startswith("avx"))
    return f"{fields.get('model name', 'unknown')} ({', '.join(avx) or 'no AVX'})"


def reference_ms(repeats: int = 3) -> float:
    """Median milliseconds of a fixed single-threaded workload: small matrix products and elementwise ops in a
    Python loop, the shape of a small recurrent net's step (a (32, 64) state times (64, 256) weights).

    It compares the speed of machines and moments, not of code: a results file whose figure is twice another's
    was measured on a machine (or at a moment) about twice as slow.
    """
    rng = np.random.default_rng(0)
    state = rng.standard_normal((32, 64)).astype(np.float32)
    weights = (rng.standard_normal((64, 256)) / 8).astype(np.float32)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        h = state
        for _ in range(1000):
            gates = np.tanh(h @ weights)  # (32, 256)
            h = gates[:, :64] * gates[:, 64:128] + gates[:, 128:192]  # (32, 64)
        times.append(time.perf_counter() - began)
    return round(1000 * statistics.median(times), 1)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews the latencies)."""
    return [round(x, 2) for x in os.getloadavg()]


class RunConditions:
    """The machine's load and steal over one benchmark run: make it before the run, :meth:`finish` after."""

    def __init__(self) -> None:
        self.load_before = loadavg()
        self.reference_before = reference_ms()
        self._ticks = cpu_ticks()

    def finish(self) -> dict:
        """``load_average_before``, ``load_average_after``, ``steal_pct``, ``cores``, ``cpu`` and ``reference_ms``
        (:func:`reference_ms` before and after), for the results file."""
        ticks = cpu_ticks()
        return {"load_average_before": self.load_before, "load_average_after": loadavg(),
                "steal_pct": steal_pct(self._ticks, ticks), "cores": os.cpu_count(), "cpu": cpu(),
                "reference_ms": [self.reference_before, reference_ms()]}


def describe(conditions: dict) -> str:
    """One sentence for a results page from :meth:`RunConditions.finish`'s fields."""
    return (f"Load average before/after {conditions['load_average_before']} / {conditions['load_average_after']}, "
            f"steal {conditions['steal_pct']}%, {conditions['cores']} cores shared with other work, CPU {conditions['cpu']}, "
            f"reference workload {conditions['reference_ms'][0]:g} / {conditions['reference_ms'][1]:g} ms before/after "
            "(benchmarks/machine.py: reference_ms; larger is slower).")
