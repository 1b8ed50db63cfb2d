"""`python -m payments run` on a fresh data folder: it serves seed users, and Ctrl-C or SIGTERM
stops everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from payments.platform.embedded import free_port

START_TIMEOUT_S = 60.0


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to collect it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_serves_seed_users_and_stops_what_it_started(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    port = free_port()
    environment = {
        key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}
    }
    environment.update(
        {"DATA_DIR": str(tmp_path / "data"), "PORT": str(port), "LOG_LEVEL": "warning"}
    )
    command = subprocess.Popen([sys.executable, "-m", "payments", "run"], env=environment, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                login = httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/login", timeout=2,
                                   json={"email": "alice@finpay.dev", "password": "password123"})  # fmt: skip
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("the service did not start")
        assert login.status_code == 200
        assert login.json()["account"]["balance"] == "10000.00"
        assert login.json()["account"]["currency"] == "ZAR"
        assert_a_payment_settles(port, login.json()["access_token"])
        started = children_of(command.pid)  # redis-server and the worker; postgres is detached
        assert any(b"payments\x00worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   for pid in started)  # fmt: skip
        postmaster = int((tmp_path / "data" / "postgres" / "postmaster.pid").read_text().split()[0])
        assert started
    finally:
        command.send_signal(stop_signal)
        command.wait(30)
    time.sleep(0.5)
    assert not [pid for pid in started if alive(pid)]
    assert not alive(postmaster)
    assert not (tmp_path / "data" / "postgres" / "postmaster.pid").exists()


def assert_a_payment_settles(port: int, alice_token: str) -> None:
    """run starts a worker beside the API: a payment accepted now is settled soon after."""
    base = f"http://127.0.0.1:{port}/api/v1"
    bob = httpx.post(f"{base}/auth/login", timeout=5,
                     json={"email": "bob@finpay.dev", "password": "password123"}).json()  # fmt: skip
    headers = {"Authorization": f"Bearer {alice_token}", "Idempotency-Key": "run-payment"}
    accepted = httpx.post(f"{base}/payments", headers=headers, timeout=5,
                          json={"to_account_number": bob["account"]["account_number"], "amount": "1.00"})  # fmt: skip
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        payment = httpx.get(f"http://127.0.0.1:{port}{accepted.headers['location']}", timeout=5,
                            headers={"Authorization": f"Bearer {alice_token}"}).json()  # fmt: skip
        if payment["status"] == "SUCCEEDED":
            return
        time.sleep(0.1)
    raise AssertionError(f"the payment was not settled: {payment}")
