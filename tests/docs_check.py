"""make docs-check: serve the API, render /docs in headless Chromium, and keep a screenshot
(docs-screenshot.png) for a person to look at."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from payments.platform.embedded import servers
from tests.api.processes import server
from tests.api.test_docs_browser import CHROMIUM, render
from tests.conftest import ROOT, make_settings

SCREENSHOT = ROOT / "docs-screenshot.png"


def main() -> int:
    if CHROMIUM is None:
        print("docs-check: Debian's chromium is needed (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch, servers(
        Path(scratch), database_url=os.environ.get("DATABASE_URL") or None,
        redis_url=os.environ.get("REDIS_URL") or None,
    ) as (database_url, redis_url):  # fmt: skip
        import asyncio

        from payments.platform.migrate import migrate

        asyncio.run(migrate(database_url))
        with server(make_settings(database_url, redis_url), Path(scratch), workers=1) as (
            base_url,
            _,
        ):
            render(f"{base_url}/docs", Path(scratch) / "profile", f"--screenshot={SCREENSHOT}",
                   "--window-size=1280,2000")  # fmt: skip
    print(f"docs-check: {SCREENSHOT.name} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
