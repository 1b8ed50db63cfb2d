"""Two API instances started in one working directory (several hosts' worth on one machine) each
keep their own Prometheus folder: the second start does not wipe the first one's files, so both
/metrics keep counting. An operator's own PROMETHEUS_MULTIPROC_DIR is used as given."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from payments.platform import metrics_folder
from payments.settings import Settings
from tests.api.processes import server
from tests.api.test_metrics_port import health_checks_counted

pytestmark = [pytest.mark.slow, pytest.mark.once]  # files on disk, not a pooler nor a cluster


def health_checks(base_url: str, count: int) -> None:
    for _ in range(count):
        with httpx.Client(base_url=base_url, timeout=10) as fresh:
            assert fresh.get("/api/v1/health").status_code == 200


def scrape(base_url: str) -> str:
    return httpx.get(f"{base_url}/metrics", timeout=10).text


def test_two_instances_in_one_folder_both_count(settings: Settings, tmp_path: Path) -> None:
    with server(settings, tmp_path, workers=2) as (first, first_process):
        health_checks(first, 5)
        with server(settings, tmp_path, workers=1) as (second, second_process):
            health_checks(second, 3)
            health_checks(first, 2)
            first_counted = health_checks_counted(scrape(first))
            second_counted = health_checks_counted(scrape(second))
            folders = sorted(path.name for path in (tmp_path / "metrics").iterdir())
        assert health_checks_counted(scrape(first)) == 7  # the second's end took nothing
    assert (first_counted, second_counted) == (7, 3)
    assert folders == sorted([str(first_process.pid), str(second_process.pid)])
    assert list((tmp_path / "metrics").iterdir()) == [], "each instance removes its own"


def test_a_dead_instance_folder_goes_when_another_starts(tmp_path: Path) -> None:
    dead = tmp_path / "999999999"  # above any pid_max
    dead.mkdir()
    (dead / "counter_1.db").write_bytes(b"")
    alive = tmp_path / str(os.getppid())
    alive.mkdir()
    files = tmp_path / "counter_2.db"  # not an instance's folder: left alone
    files.write_bytes(b"")
    assert metrics_folder.remove_stale(tmp_path) == [dead]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([alive.name, files.name])


def test_an_operators_folder_is_used_and_never_wiped(settings: Settings, tmp_path: Path) -> None:
    own = tmp_path / "prometheus"
    own.mkdir()
    kept = own / "notes.txt"  # a file of the operator's: stays where it is
    kept.write_text("mine")
    with server(settings, tmp_path, workers=1, PROMETHEUS_MULTIPROC_DIR=str(own)) as (api, _):
        health_checks(api, 4)
        assert health_checks_counted(scrape(api)) == 4
        assert len(list(own.glob("counter_*.db"))) == 1  # the one API process's
    assert kept.exists()
    assert not (tmp_path / "metrics").exists()
