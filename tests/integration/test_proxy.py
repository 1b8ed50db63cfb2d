"""The shipped ops/nginx/nginx.conf, run by a real nginx in front of the real service: it refuses
oversized headers and request lines, drops a request whose header never ends, and hands the API
the client address it saw, which the API trusts from the proxy's address only."""

from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis

from payments.platform.embedded import free_port
from payments.settings import Settings
from tests.api.processes import server

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "ops" / "nginx" / "nginx.conf"
NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
)
NGINX_START_TIMEOUT_S = 10.0
RATE_LIMIT_AUTH = "3/1m"
LOGIN = {"email": "nobody@example.com", "password": "not-the-password"}
# Loopback addresses of the clients: the proxy and the API see a different one for each.
CLIENT_VIA_PROXY = "127.0.0.5"
CLIENT_DIRECT = "127.0.0.6"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        NGINX is None, reason="no nginx binary (.ci/run installs Debian's nginx-light as root)"
    ),
]


@dataclass(frozen=True)
class Edge:
    proxy_url: str
    proxy_port: int
    api_url: str  # the API behind the proxy, trusting the proxy's address (127.0.0.1)


def render(conf: str, *, folder: Path, listen_port: int, api_port: int) -> str:
    """The shipped file with its places pointed at the test's own: each line is rewritten where it
    stands, and must be found exactly as shipped. Every other directive is tested as it is."""
    places = [
        ("user nginx;", f"user {pwd.getpwuid(os.geteuid()).pw_name};", 1),
        ("pid /var/run/nginx.pid;", f"pid {folder}/nginx.pid;", 1),
        ("/var/cache/nginx/", f"{folder}/", 5),
        ("listen 8080;", f"listen 127.0.0.1:{listen_port};", 1),
        ("server api:8000;", f"server 127.0.0.1:{api_port};", 1),
    ]
    for shipped, ours, count in places:
        assert conf.count(shipped) == count, f"nginx.conf no longer has {shipped!r} {count}x"
        conf = conf.replace(shipped, ours)
    return conf


def shipped_seconds(directive: str) -> int:
    match = re.search(rf"^\s*{directive} ([0-9]+)s;", NGINX_CONF.read_text(), re.MULTILINE)
    assert match is not None, f"nginx.conf sets no {directive} in seconds"
    return int(match.group(1))


def flush_redis(settings: Settings) -> Redis:
    redis = Redis.from_url(str(settings.redis_url))
    redis.flushdb()
    return redis


def auth_buckets(redis: Redis) -> set[str]:
    """The client addresses the auth rate-limit tier has charged, read from its Redis keys."""
    keys = redis.keys("payments:{ip:*}:rate:auth")
    return {re.sub(r"^payments:\{ip:(.*)\}:rate:auth$", r"\1", key.decode()) for key in keys}


@pytest.fixture(scope="module")
def edge(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    assert NGINX is not None
    folder = tmp_path_factory.mktemp("edge")
    flush_redis(settings).close()
    serving = server(settings, folder, workers=1, FORWARDED_ALLOW_IPS="127.0.0.1",
                     RATE_LIMIT_AUTH=RATE_LIMIT_AUTH)  # fmt: skip
    with serving as (api_url, _):
        proxy_port = free_port()
        conf = folder / "nginx.conf"
        conf.write_text(
            render(NGINX_CONF.read_text(), folder=folder, listen_port=proxy_port,
                   api_port=int(api_url.rsplit(":", 1)[1]))
        )  # fmt: skip
        log = (folder / "nginx.log").open("ab")  # read it when a test fails
        nginx = subprocess.Popen([NGINX, "-p", f"{folder}/", "-c", str(conf), "-g", "daemon off;"],
                                 stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        log.close()
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        try:
            deadline = time.monotonic() + NGINX_START_TIMEOUT_S
            while nginx.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"{proxy_url}/api/v1/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                raise RuntimeError(f"nginx did not start: {(folder / 'nginx.log').read_text()}")
            yield Edge(proxy_url=proxy_url, proxy_port=proxy_port, api_url=api_url)
        finally:
            if nginx.poll() is None:
                nginx.send_signal(signal.SIGTERM)  # fast shutdown
            nginx.wait(10)


def test_an_oversized_header_is_refused_by_the_proxy_and_the_api_still_answers(
    edge: Edge,
) -> None:
    refused = httpx.get(f"{edge.proxy_url}/api/v1/health", headers={"X-Padding": "a" * 40_000})
    assert refused.status_code in {400, 431, 494}
    assert refused.headers["server"] == "nginx", "refused at the edge, not by the API"

    answered = httpx.get(f"{edge.proxy_url}/api/v1/health", headers={"X-Request-ID": "edge-1"})
    assert answered.status_code == 200
    assert answered.headers["x-request-id"] == "edge-1", "the client's request id goes through"
    unnamed = httpx.get(f"{edge.proxy_url}/api/v1/health")
    assert re.fullmatch(r"[0-9a-f]{32}", unnamed.headers["x-request-id"])


def test_an_oversized_request_line_is_414(edge: Edge) -> None:
    refused = httpx.get(f"{edge.proxy_url}/api/v1/health", params={"padding": "a" * 20_000})
    assert refused.status_code == 414


def test_a_header_that_never_ends_is_dropped_within_client_header_timeout(edge: Edge) -> None:
    """Half a request, then a byte a second: never idle, never finished. The proxy closes it once
    client_header_timeout has passed since the request began, not at its next idle gap."""
    timeout_s = shipped_seconds("client_header_timeout")
    with socket.create_connection(("127.0.0.1", edge.proxy_port), timeout=timeout_s + 5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: proxy\r\nX-Slow: ")
        answer = None
        while time.monotonic() - started < timeout_s + 5:
            if select.select([sock], [], [], 1.0)[0]:
                try:
                    answer = sock.recv(4096)
                except ConnectionResetError:
                    answer = b""
                break
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
                break
        elapsed_s = time.monotonic() - started
    assert answer is not None, f"still open after {elapsed_s:.1f} s"
    assert not answer.startswith(b"HTTP/1.1 200"), answer
    assert timeout_s - 1 <= elapsed_s <= timeout_s + 2, elapsed_s


def test_through_the_proxy_the_rate_limit_counts_the_address_the_proxy_saw(
    edge: Edge, settings: Settings
) -> None:
    """A client that names a new X-Forwarded-For each time still spends one bucket: the proxy
    replaced the header with the address it saw, and the API took that one. From 127.0.0.5 this
    shows the API reads the proxy's header; from 127.0.0.1, the proxy's own address, that the
    proxy overwrote it (appended to, the spoofed address would come first and be believed)."""
    redis = flush_redis(settings)
    for client_address in (CLIENT_VIA_PROXY, "127.0.0.1"):
        transport = httpx.HTTPTransport(local_address=client_address)
        with httpx.Client(transport=transport, base_url=edge.proxy_url, timeout=10) as client:
            statuses = [
                client.post("/api/v1/auth/login", json=LOGIN,
                            headers={"X-Forwarded-For": f"1.2.3.{n}"}).status_code
                for n in range(4)
            ]  # fmt: skip
        assert statuses == [401, 401, 401, 429], client_address
    assert auth_buckets(redis) == {CLIENT_VIA_PROXY, "127.0.0.1"}
    redis.close()


def test_without_the_proxy_a_spoofed_address_is_ignored(
    edge: Edge, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Straight to the API, X-Forwarded-For counts for nothing: from an address the API does not
    trust as a proxy, and on a service that trusts no proxy at all (FORWARDED_ALLOW_IPS unset),
    even from loopback, which uvicorn would trust by itself."""
    redis = flush_redis(settings)

    def four_logins(base_url: str, local_address: str) -> list[int]:
        transport = httpx.HTTPTransport(local_address=local_address)
        with httpx.Client(transport=transport, base_url=base_url, timeout=10) as client:
            return [
                client.post("/api/v1/auth/login", json=LOGIN,
                            headers={"X-Forwarded-For": f"1.2.3.{n}"}).status_code
                for n in range(4)
            ]  # fmt: skip

    assert four_logins(edge.api_url, CLIENT_DIRECT) == [401, 401, 401, 429]
    assert auth_buckets(redis) == {CLIENT_DIRECT}

    redis.flushdb()
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)  # unset, as by default
    serving = server(settings, tmp_path, workers=1, RATE_LIMIT_AUTH=RATE_LIMIT_AUTH)
    with serving as (trusting_no_proxy, _):
        assert four_logins(trusting_no_proxy, "127.0.0.1") == [401, 401, 401, 429]
    assert auth_buckets(redis) == {"127.0.0.1"}
    redis.close()
