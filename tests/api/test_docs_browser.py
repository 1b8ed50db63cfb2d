"""/docs in a real browser: headless Chromium renders openapi.yaml, offline, with every operation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from payments.operations.docs import OPENAPI_PATH
from payments.settings import Settings
from tests.api.processes import server

pytestmark = pytest.mark.once  # about the docs page, not a pooler nor a cluster

CHROMIUM = shutil.which("chromium")
# As the workplace's machines need: no sandbox as root, and no background calls to the network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=10000",
]  # fmt: skip


def render(url: str, profile: Path, *extra: str) -> str:
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True).stdout


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`.ci/run` installs it)"
)
def test_docs_render_every_operation(settings: Settings, tmp_path: Path) -> None:
    paths = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))["paths"]
    with server(settings, tmp_path, workers=1) as (base_url, _):
        dom = render(f"{base_url}/docs", tmp_path / "profile", "--dump-dom")
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert rendered == set(paths)
