"""Where this instance's processes write their Prometheus files (multiprocess mode).

prometheus-client sums every file of PROMETHEUS_MULTIPROC_DIR on a scrape, and its documentation
asks for the folder to be wiped between runs. Two instances (`serve` twice, or `serve` and a
`worker`) started in one working directory would share one folder, and each start would wipe the
other's files: its /metrics would stop counting. So each instance has a folder of its own, named
after its main process id, under DATA_DIR; the folders of instances whose process is gone are
removed when another starts. An operator's own PROMETHEUS_MULTIPROC_DIR is used as given and
never wiped: wiping it between runs is theirs to do, as prometheus-client documents.

Nothing here imports prometheus_client: it must be imported after the variable is set, or this
process's metrics would live in memory instead of in the folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def instance_folder(parent: Path) -> Path:
    """A fresh folder for this process and the API processes it starts, in `parent`, after the
    stale folders of dead instances there are removed; PROMETHEUS_MULTIPROC_DIR names it."""
    remove_stale(parent)
    folder = parent / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)  # a dead process's, whose id came round again
    folder.mkdir(parents=True)
    os.environ[VARIABLE] = str(folder.resolve())
    return folder


def remove_stale(parent: Path) -> list[Path]:
    """Remove the instance folders in `parent` whose process no longer runs; return them.
    A folder of files (the one-folder layout of earlier versions) is left alone."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for folder in parent.iterdir():
        if folder.is_dir() and folder.name.isdigit() and not running(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True


def remove_own(folder: Path) -> None:
    """At the instance's end: nothing of it is left to scrape."""
    shutil.rmtree(folder, ignore_errors=True)
