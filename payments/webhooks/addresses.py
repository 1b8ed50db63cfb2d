"""Where a webhook may be sent. Outside development, a URL whose host resolves to an address that
is not on the public internet (loopback, private, link-local and the cloud metadata address,
unique-local, multicast, unspecified, reserved, shared) is refused: at creation, and again at
each delivery, since DNS can change. The delivery then connects to the address it checked, not to
the name again, so a name that resolves to a public address for the check and a private one a
moment later (DNS rebinding) gains nothing."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

URL_LENGTH_MAX = 2048
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL is not one the service sends to; the message says why (it names no address)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one delivery goes: the URL to request, and the Host and TLS name it stands for."""

    url: str
    host_header: str | None = None  # the name (and port) the receiver expects, when url is pinned
    server_name: str | None = None  # the name its TLS certificate must carry, when url is pinned


def parse_url(text: str) -> SplitResult:
    """An absolute http or https URL with a host, no credentials and no fragment."""
    if len(text) > URL_LENGTH_MAX or not text.isascii() or any(c.isspace() for c in text):
        raise UrlRefused(f"must be an absolute http(s) URL of at most {URL_LENGTH_MAX} characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise UrlRefused("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("must be an absolute http or https URL")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise UrlRefused("must not carry credentials or a fragment")
    if port == 0:
        raise UrlRefused("names no port")
    return parts


def is_public(address: IpAddress) -> bool:
    """On the public internet: is_global leaves out loopback, private (RFC 1918, unique-local),
    link-local (169.254.169.254, the metadata address, among them), unspecified, reserved and
    shared (100.64/10) addresses. An IPv4-mapped IPv6 address is judged by its IPv4 form, which
    Python before 3.13 does not look through."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address the host names (itself, when it is one), through the event loop's resolver."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UrlRefused("its host does not resolve") from None
    return [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]


async def checked_target(url: str, *, guarded: bool) -> Target:
    """The URL as it is (guarded False: development), or pinned to a public address its host
    resolves to; UrlRefused when any address it resolves to is not public."""
    parts = parse_url(url)
    if not guarded:
        return Target(url=url)
    assert parts.hostname is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(parts.hostname, port)
    if not addresses or not all(is_public(address) for address in addresses):
        raise UrlRefused("must not resolve to a loopback, private, link-local or other "
                         "non-public address")  # fmt: skip
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return Target(url=parts._replace(netloc=netloc).geturl(), host_header=parts.netloc,
                  server_name=parts.hostname)  # fmt: skip
