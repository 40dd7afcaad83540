"""What else the machine was doing while a benchmark ran: load average and hypervisor steal, and its CPU.

On a VM, "steal" is the time the hypervisor gave this guest's vCPUs to other guests; while it
is high, every figure here is slower (2x swings within minutes were seen on the 2-core VMs).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RunConditions", "cpu", "cpu_ticks", "describe", "loadavg", "steal_pct"]


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


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews the latencies)."""
    return [round(x, 2) for x in os.getloadavg()]


class RunConditions:
    """The machine's load and steal over one benchmark run: make it before the run, :meth:`finish` after."""

    def __init__(self) -> None:
        self.load_before = loadavg()
        self._ticks = cpu_ticks()

    def finish(self) -> dict:
        """``load_average_before``, ``load_average_after``, ``steal_pct``, ``cores`` and ``cpu``, for the results file."""
        return {"load_average_before": self.load_before, "load_average_after": loadavg(),
                "steal_pct": steal_pct(self._ticks, cpu_ticks()), "cores": os.cpu_count(), "cpu": cpu()}


def describe(conditions: dict) -> str:
    """One sentence for a results page from :meth:`RunConditions.finish`'s fields."""
    return (f"Load average before/after {conditions['load_average_before']} / {conditions['load_average_after']}, "
            f"steal {conditions['steal_pct']}%, {conditions['cores']} cores shared with other work, CPU {conditions['cpu']}.")
