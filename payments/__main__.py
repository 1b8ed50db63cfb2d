"""python -m payments run | serve | worker | migrate | seed | create-admin --email E

run: migrate, seed, and serve the API with one worker process beside it. Without DATABASE_URL / REDIS_URL, an embedded PostgreSQL and Redis
are started in the data folder for as long as the command runs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
import uvicorn

from payments.admin.create_admin import AdminError, create_admin, read_arguments
from payments.identity.seed import seed
from payments.platform import metrics_folder
from payments.platform.embedded import EmbeddedMissing, servers
from payments.platform.log import configure_logging
from payments.platform.migrate import migrate
from payments.platform.settings import SettingsError
from payments.settings import Settings

COMMANDS = ("run", "serve", "worker", "migrate", "seed", "create-admin")
log = structlog.get_logger("payments")
WORKER_STOP_TIMEOUT_S = 15.0  # the worker's own grace for the batch in hand, and some margin


def serve(settings: Settings) -> None:
    """uvicorn with WORKERS processes; each builds its app from the environment."""
    uvicorn.run(
        "payments.app:app_from_environ",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # the app writes one canonical line per request instead
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        log_level=settings.log_level.lower(),
        # uvicorn would otherwise read FORWARDED_ALLOW_IPS itself and trust loopback by default.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keep_alive_timeout_s,
    )


@contextmanager
def metrics_listener(settings: Settings) -> Iterator[None]:
    """With METRICS_PORT set, Prometheus text on that port, every API process's metrics added
    up, served by a thread of this process while the block runs."""
    if settings.metrics_port is None:
        yield
        return
    # Imported here, once PROMETHEUS_MULTIPROC_DIR is set (see metrics_folder).
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    listener, thread = start_http_server(settings.metrics_port, addr=settings.host,
                                         registry=registry)  # fmt: skip
    try:
        yield
    finally:
        listener.shutdown()
        listener.server_close()
        thread.join()


@contextmanager
def metrics_directory(parent: Path) -> Iterator[None]:
    """The Prometheus folder of this instance's processes (see metrics_folder): an operator's
    PROMETHEUS_MULTIPROC_DIR as given, or one of this instance's own in `parent`, removed when
    the instance ends. Set before the app (and prometheus_client) is imported."""
    given = os.environ.get(metrics_folder.VARIABLE)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        yield
        return
    folder = metrics_folder.instance_folder(parent)
    try:
        yield
    finally:
        metrics_folder.remove_own(folder)


def exit_on_sigterm(signal_number: int, frame: object) -> None:
    """uvicorn re-raises SIGTERM once it has shut down gracefully; exiting through Python (not
    the default handler, which kills at once) stops the embedded servers this command started."""
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "run"
    if command not in COMMANDS:
        print(f"usage: python -m payments {' | '.join(COMMANDS)}", file=sys.stderr)
        return 2
    admin_email = read_arguments(argv[2:]) if command == "create-admin" else None
    try:
        settings = Settings.from_environ(os.environ)
    except SettingsError as error:
        print(f"payments: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        return run_command(command, settings, admin_email)
    except EmbeddedMissing as error:
        print(f"payments: {error}", file=sys.stderr)
        return 2


def run_command(command: str, settings: Settings, admin_email: str | None) -> int:
    """The command, with its servers: the given ones, or embedded ones for as long as it runs."""
    with servers(settings.data_dir, database_url=settings.database_url,
                 redis_url=settings.redis_url) as (database_url, redis_url):  # fmt: skip
        # The API processes read these, so they use the servers started here.
        os.environ["DATABASE_URL"] = database_url
        os.environ["REDIS_URL"] = redis_url
        settings = settings.model_copy(
            update={"database_url": database_url, "redis_url": redis_url}
        )
        # One-off work (a migration may be long, and holds its lock) goes past a pooler when it can.
        direct_url = settings.database_direct_url or database_url
        asyncio.run(migrate(direct_url))
        if command in ("run", "seed") and settings.env == "production":
            log.info("seed_skipped", reason="the seed users' passwords are public")
        elif command in ("run", "seed"):
            asyncio.run(seed(settings, direct_url))
        if admin_email is not None:
            try:
                created = asyncio.run(create_admin(settings, direct_url, admin_email))
            except AdminError as error:
                print(f"payments: {error}", file=sys.stderr)
                return 2
            print(f"{admin_email} is an admin{' (created)' if created else ''}")
        if command in ("run", "serve"):
            log.info("serving", host=settings.host, port=settings.port, workers=settings.workers,
                     metrics_port=settings.metrics_port)  # fmt: skip
            with metrics_directory(settings.data_dir / "metrics"), metrics_listener(settings), \
                    worker_beside(command == "run"):  # fmt: skip
                serve(settings)
        if command == "worker":
            # A worker started by run joins run's folder (the variable is set); one of its own
            # has a folder of its own.
            with metrics_directory(settings.data_dir / "metrics-worker"):
                return work(settings)
    return 0


def work(settings: Settings) -> int:
    # Imported here, once PROMETHEUS_MULTIPROC_DIR is set (see metrics_folder).
    from payments.worker import run_worker

    with metrics_listener(settings):
        if not asyncio.run(run_worker(settings)):
            return 1  # a loop broke: a supervisor starts a sound worker
    return 0


@contextmanager
def worker_beside(wanted: bool) -> Iterator[None]:
    """`run` starts one worker process beside the API (its command line names it, so an operator
    can find and signal it), and stops it, gracefully, when the API stops."""
    if not wanted:
        yield
        return
    environment = {**os.environ, "METRICS_PORT": ""}  # its metrics join the API's folder
    process = subprocess.Popen([sys.executable, "-m", "payments", "worker"], env=environment)
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
