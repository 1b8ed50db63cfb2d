"""The real service in a process of its own, serving the tests' database and Redis over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from payments.platform.embedded import free_port
from payments.settings import Settings

SERVER_START_TIMEOUT_S = 30.0


@contextmanager
def server(
    settings: Settings, data_dir: Path, *, workers: int, command: str = "serve", **variables: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m payments serve` (or `run`) against the given database and Redis, until the
    block ends."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": str(settings.database_url), "REDIS_URL": str(settings.redis_url),
        "JWT_SECRET": settings.jwt_secret.get_secret_value(), "DATA_DIR": str(data_dir),
        "PORT": str(port), "WORKERS": str(workers), "LOG_LEVEL": "warning", "LOG_FORMAT": "json",
        "RATE_LIMIT_GLOBAL": "30/1m", "RATE_LIMIT_TRANSFER": "1000/1m",
        "DATABASE_POOLER": settings.database_pooler,
        "DATABASE_DIRECT_URL": settings.database_direct_url or "", **variables,
    }  # fmt: skip
    log = (data_dir / "server.log").open("ab")  # read it when a test fails
    process = subprocess.Popen([sys.executable, "-m", "payments", command], env=environment, cwd=data_dir,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base_url}/api/v1/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the server did not become ready")
        yield base_url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(15)


def start_worker(database_url: str, redis_url: str, data_dir: Path,
                 **variables: str) -> subprocess.Popen[bytes]:  # fmt: skip
    """`python -m payments worker` against the given database and Redis: a short lease and a
    quick poll, so that tests see a killed worker replaced in about a second."""
    environment = {
        **os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "DATA_DIR": str(data_dir), "LOG_LEVEL": "warning", "PAYMENT_LEASE": "1s",
        "WORKER_POLL_INTERVAL": "100ms", "DATABASE_DIRECT_URL": "", "DATABASE_POOLER": "none",
        **variables,
    }  # fmt: skip
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (data_dir / "worker.log").open("ab")  # read it when a test fails
    process = subprocess.Popen([sys.executable, "-m", "payments", "worker"], env=environment,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    return process
