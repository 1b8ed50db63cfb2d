"""CPU time of the processes a scenario keeps busy, read from /proc (Linux): the service's, the
PostgreSQL server's, Redis's and the load generator's. Divided by the requests answered, it says
where a request's cost goes on a machine whose cores they all share."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.procfs import stat

TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: set[int]) -> float:
    """User and system time of the processes, so far."""
    total = 0
    for pid in pids:
        fields = stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS_PER_S


class CpuMeter:
    """CPU seconds per group of processes between start() and stop(); each group's processes are
    looked up afresh at each reading, so a PostgreSQL backend started mid-run is counted."""

    def __init__(self, groups: dict[str, Callable[[], set[int]]]) -> None:
        self.groups = groups
        self.started: dict[str, float] = {}
        self.available = Path("/proc/self/stat").exists()

    def read(self) -> dict[str, float]:
        if not self.available:
            return {}
        return {name: cpu_seconds(pids()) for name, pids in self.groups.items()}

    def start(self) -> None:
        self.started = self.read()

    def stop(self) -> dict[str, float]:
        return {
            name: seconds - self.started.get(name, 0.0) for name, seconds in self.read().items()
        }
