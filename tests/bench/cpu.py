"""CPU time of the processes a scenario keeps busy, read from /proc (Linux): the service's, the
PostgreSQL server's, Redis's and the load generator's. Divided by the requests answered, it says
where a request's cost goes on a machine whose cores they all share."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pids: set[int]) -> float:
    """User and system time of the processes, so far."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS_PER_S


def process_tree(root: int) -> set[int]:
    """`root` and all its descendants, now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += parents.get(pid, [])
    return found


def listening_on(port: int) -> set[int]:
    """The processes holding a socket that listens on a TCP port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            inodes.add(fields[9])
    holders = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if any(os.readlink(fd)[8:-1] in inodes for fd in (entry / "fd").iterdir()):
                    holders.add(int(entry.name))
            except OSError:
                continue
    return holders


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
