"""What `python -m payments serve` asks of uvicorn: no proxy trusted unless FORWARDED_ALLOW_IPS
names one, and the connection limits set explicitly (uvicorn reads some of them from the
environment by itself otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from payments import __main__ as command
from payments.settings import Settings


def uvicorn_options(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> dict[str, object]:
    called: dict[str, object] = {}
    monkeypatch.setattr(command.uvicorn, "run", lambda app, **options: called.update(options))
    command.serve(Settings.from_environ(environ, dotenv=None))
    return called


def test_no_proxy_is_trusted_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # uvicorn's own default trusts loopback when it reads this variable itself.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    options = uvicorn_options(monkeypatch, {"DATA_DIR": str(tmp_path)})
    assert options["proxy_headers"] is False
    assert options["forwarded_allow_ips"] == ""


def test_the_named_proxy_is_trusted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = uvicorn_options(
        monkeypatch, {"FORWARDED_ALLOW_IPS": "10.89.0.10", "DATA_DIR": str(tmp_path)}
    )
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == "10.89.0.10"


def test_connection_limits_are_passed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = uvicorn_options(
        monkeypatch,
        {"LIMIT_CONCURRENCY": "300", "KEEP_ALIVE_TIMEOUT": "20s", "DATA_DIR": str(tmp_path)},
    )
    assert (options["limit_concurrency"], options["timeout_keep_alive"]) == (300, 20)
