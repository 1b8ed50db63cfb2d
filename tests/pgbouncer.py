"""PgBouncer in transaction pooling mode in front of a PostgreSQL, for the tests and the bench.

`pgbouncer(upstream_url)` starts Debian's pgbouncer binary on a free loopback port with a
configuration written to a scratch folder, and yields the URL of the same database through it.

`python -m tests.pgbouncer COMMAND...` runs COMMAND with DATABASE_URL through a PgBouncer in front
of DATABASE_URL (or of an embedded PostgreSQL when it is unset), DATABASE_DIRECT_URL naming the
server itself and DATABASE_POOLER=transaction: `make test-pgbouncer` runs the API tests so."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from payments.platform.embedded import free_port, start_postgres, stop_postgres

START_TIMEOUT_S = 10.0
ROOT = Path(__file__).resolve().parent.parent
# The sessions' settings the service sends when it connects straight to PostgreSQL
# (payments.platform.db.server_settings); behind the pooler every server connection runs them
# when it opens instead. An operator would set them on the role: ALTER ROLE ... SET.
CONNECT_QUERY = (
    "SET statement_timeout = 10000; SET lock_timeout = 2000;"
    " SET idle_in_transaction_session_timeout = 60000"
)


def binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (str(path) for path in (Path("/usr/sbin/pgbouncer"),) if path.exists()), None
    )


def upstream_of(url: str) -> tuple[str, int, str | None]:
    """Host (or socket folder), port, and the owner of the socket folder if it is one."""
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if socket_dir:  # embedded PostgreSQL: a Unix socket in its data folder, no TCP
        port = int((Path(socket_dir) / "postmaster.pid").read_text().splitlines()[3])
        return socket_dir, port, pwd.getpwuid(os.stat(socket_dir).st_uid).pw_name
    return parts.hostname or "127.0.0.1", parts.port or 5432, None


def config(upstream_url: str, port: int, folder: Path, pool_size: int) -> str:
    host, upstream_port, _ = upstream_of(upstream_url)
    user = urlsplit(upstream_url).username or "postgres"
    run_as = user_to_run_as(upstream_url)
    lines = [
        "[databases]",
        f"* = host={host} port={upstream_port} user={user} connect_query='{CONNECT_QUERY}'",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",  # loopback only, and the upstream trusts loopback too
        f"auth_file = {folder / 'users.txt'}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "max_client_conn = 2000",
        "max_db_connections = 0",
        "server_reset_query =",
        f"logfile = {folder / 'pgbouncer.log'}",
        f"pidfile = {folder / 'pgbouncer.pid'}",
        *([f"user = {run_as}"] if run_as else []),
    ]
    return "\n".join(lines) + "\n"


def user_to_run_as(upstream_url: str) -> str | None:
    """pgbouncer refuses to run as root: it switches to the owner of the upstream's socket (who
    alone may open it), or to postgres."""
    if os.geteuid() != 0:
        return None
    return upstream_of(upstream_url)[2] or "postgres"


@contextmanager
def pgbouncer(upstream_url: str, *, pool_size: int = 20) -> Iterator[str]:
    """PgBouncer (transaction pooling) in front of upstream_url until the block ends; yields
    the URL of upstream_url's database through it."""
    program = binary()
    if program is None:
        raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as scratch:
        folder = Path(scratch)
        (folder / "users.txt").write_text('"postgres" ""\n')
        (folder / "pgbouncer.ini").write_text(config(upstream_url, port, folder, pool_size))
        run_as = user_to_run_as(upstream_url)
        if run_as:  # pgbouncer, as the user it switches to, writes its log here
            os.chown(folder, pwd.getpwnam(run_as).pw_uid, -1)
        process = subprocess.Popen([program, str(folder / "pgbouncer.ini")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for(port, process, folder)
            parts = urlsplit(upstream_url)
            user = parts.username or "postgres"
            yield urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", parts.path, "", ""))
        finally:
            process.terminate()
            process.wait(10)


def wait_for(port: int, process: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = folder / "pgbouncer.log"
            raise RuntimeError("pgbouncer stopped: " + (log.read_text() if log.exists() else ""))
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("pgbouncer did not listen in time")


@contextmanager
def upstream() -> Iterator[str]:
    """DATABASE_URL, or an embedded PostgreSQL of its own folder for as long as the block runs."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    url, server = start_postgres(ROOT / ".data" / "test-pgbouncer")
    try:
        yield url
    finally:
        stop_postgres(server)


def main(command: list[str]) -> int:
    if not command:
        print("usage: python -m tests.pgbouncer COMMAND...", file=sys.stderr)
        return 2
    with upstream() as direct_url, pgbouncer(direct_url) as pooled_url:
        environment = {**os.environ, "DATABASE_URL": pooled_url,
                       "DATABASE_DIRECT_URL": direct_url, "DATABASE_POOLER": "transaction"}  # fmt: skip
        print(f"pgbouncer: {pooled_url} in front of PostgreSQL", file=sys.stderr)
        return subprocess.run(command, env=environment, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
