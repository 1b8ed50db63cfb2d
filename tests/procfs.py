"""What /proc (Linux) says about processes and their TCP sockets, for the load runs: which
processes make up a server, which one holds a port's connections, how much CPU they used."""

from __future__ import annotations

import os
from pathlib import Path

ESTABLISHED, LISTEN = "01", "0A"  # socket states as /proc/net/tcp writes them


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, parent, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def process_tree(root: int) -> set[int]:
    """`root` and all its descendants, now."""
    children: dict[int, list[int]] = {}
    for pid in pids():
        if (fields := stat(pid)) is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def tcp_sockets(port: int, state: str) -> set[str]:
    """The inodes of the TCP sockets on a local port, in a state."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def sockets_of(pid: int) -> set[str]:
    """The inodes of the sockets a process holds open."""
    try:
        return {os.readlink(fd)[8:-1] for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:
        return set()


def listening_on(port: int) -> set[int]:
    """The processes holding a socket that listens on a TCP port."""
    listening = tcp_sockets(port, LISTEN)
    return {pid for pid in pids() if sockets_of(pid) & listening}
