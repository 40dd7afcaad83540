"""What else the machine was doing while a benchmark ran: load average and hypervisor steal.

On a VM, "steal" is the time the hypervisor gave this guest's vCPUs to other guests; while it
is high, every figure here is slower (2x swings within minutes were seen on the 2-core VMs).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_ticks", "loadavg", "steal_pct"]


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7], sum(fields)


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Percent of CPU time stolen by the hypervisor between two :func:`cpu_ticks` readings."""
    return round(100 * (after[0] - before[0]) / max(1, after[1] - before[1]), 1)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews the latencies)."""
    return [round(x, 2) for x in os.getloadavg()]
