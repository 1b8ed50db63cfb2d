"""METRICS_PORT: the real server shows its metrics on a listener of their own, every API
process's added up, and the API port no longer shows them. With WORKERS=2 the listener lives in
the supervising process, which answers no request: what it counts, it read from the workers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from payments.platform.embedded import free_port
from payments.settings import Settings
from tests.api.processes import server

pytestmark = pytest.mark.once  # about processes and ports, not a pooler nor a cluster

HEALTH_CHECKS = 12


def health_checks_counted(scraped: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "payments_http_requests_total"
        and sample.labels == {"method": "GET", "route": "/api/v1/health", "status_class": "2xx"}
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_are_served_on_their_own_port_only(
    settings: Settings, tmp_path: Path, workers: int
) -> None:
    metrics_port = free_port()
    serving = server(settings, tmp_path, workers=workers, METRICS_PORT=str(metrics_port))
    with serving as (api, process):
        for _ in range(HEALTH_CHECKS):
            with httpx.Client(base_url=api, timeout=10) as fresh:  # a connection each
                assert fresh.get("/api/v1/health").status_code == 200
        on_api_port = httpx.get(f"{api}/metrics", timeout=10)
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert on_api_port.status_code == 404
    assert on_api_port.headers["content-type"] == "application/problem+json"
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert health_checks_counted(scraped.text) == HEALTH_CHECKS
    assert process.returncode == 0, "SIGTERM stops the listener with the rest"
