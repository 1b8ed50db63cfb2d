"""The Docker stack's files: compose.yaml, the nginx proxy's config, Prometheus's scrape config and
the Grafana dashboard."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from payments.platform import metrics
from payments.settings import Settings
from tests.conftest import TEST_WEBHOOK_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "compose.yaml"
PROMETHEUS_PATH = ROOT / "ops" / "prometheus" / "prometheus.yml"
NGINX_PATH = ROOT / "ops" / "nginx" / "nginx.conf"
DASHBOARDS = ROOT / "ops" / "grafana" / "dashboards"
DATASOURCE_UID = "prometheus"
SERVICES = {"postgres", "redis", "api", "worker", "proxy", "prometheus", "grafana"}
METRIC_NAME = re.compile(r"\bpayments_[a-z_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE_PATH)
    return loaded


def environment_of(service: str) -> dict[str, str]:
    return {key: str(value) for key, value in compose()["services"][service]["environment"].items()}


def api_environment() -> dict[str, str]:
    return environment_of("api")


def nginx_directive(pattern: str) -> str:
    """The one value of a directive in the shipped nginx.conf, e.g. `listen ([0-9]+)`."""
    found = re.findall(rf"^\s*{pattern};", NGINX_PATH.read_text(encoding="utf-8"), re.MULTILINE)
    assert len(found) == 1, f"nginx.conf has {len(found)} of {pattern!r}"
    return str(found[0])


def published(service: dict[str, Any]) -> dict[str, str]:
    """Host port -> container port, from the short syntax ("8000:8080")."""
    pairs = (str(port).rsplit(":", 2)[-2:] for port in service.get("ports", ()))
    return {host: container for host, container in pairs}


def bind_sources(service: dict[str, Any]) -> Iterator[str]:
    """The host side of each bind mount: short syntax (./src:/dst[:ro]) or long (type: bind)."""
    for volume in service.get("volumes", ()):
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):  # otherwise a named volume
                yield source
        elif volume.get("type") == "bind":
            yield volume["source"]


def exported_series() -> dict[str, set[str]]:
    """Each metric's family name, and the series names /metrics exposes for it, read from the
    metric objects themselves: a counter's family name lacks _total, a histogram's has buckets."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            if family.type == "counter":
                series[family.name] = {f"{family.name}_total"}
            elif family.type == "histogram":
                series[family.name] = {family.name + suffix for suffix in HISTOGRAM_SUFFIXES}
            else:
                series[family.name] = {family.name}
    assert series, "payments.platform.metrics defines no metric"
    return series


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside rows."""
    for panel in dashboard.get("panels", ()):
        yield panel
        yield from panel.get("panels", ())


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    found = [
        (path.name, json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(DASHBOARDS.glob("*.json"))
    ]
    assert found, f"no dashboard in {DASHBOARDS}"
    return found


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in panels(dashboard)
        for target in panel.get("targets", ())
        if target.get("expr")
    ]


def used_names(expression: str) -> set[str]:
    return set(METRIC_NAME.findall(expression))


def test_compose_has_the_stack_and_every_mounted_path_exists() -> None:
    services = compose()["services"]
    assert set(services) >= SERVICES
    missing = [
        f"{name}: {source}"
        for name, service in services.items()
        for source in bind_sources(service)
        if not (ROOT / source).exists()
    ]
    assert not missing, f"compose.yaml mounts paths the repository does not have: {missing}"
    assert (ROOT / services["api"]["build"]).is_dir()


def test_compose_runs_two_api_workers_and_publishes_the_ports() -> None:
    services = compose()["services"]
    assert api_environment()["WORKERS"] == "2"
    assert "8000" in published(services["proxy"])
    assert "9090" in published(services["prometheus"])
    assert "3000" in published(services["grafana"])
    assert str(services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"]) == "true"


def test_only_the_proxy_publishes_the_api() -> None:
    """Clients reach the API through nginx and its limits, never around them."""
    services = compose()["services"]
    assert not services["api"].get("ports"), "the api service publishes a port of its own"
    assert not services["postgres"].get("ports")
    assert not services["redis"].get("ports")
    proxy = services["proxy"]
    assert published(proxy)["8000"] == nginx_directive(r"listen ([0-9]+)")
    assert "./ops/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert nginx_directive(r"server ([a-z]+:[0-9]+)") == f"api:{api_environment()['PORT']}"


def test_the_api_trusts_forwarded_addresses_from_the_proxy_only() -> None:
    config = compose()
    proxy_address = config["services"]["proxy"]["networks"]["default"]["ipv4_address"]
    subnets = [ipaddress.ip_network(c["subnet"]) for c in config["networks"]["default"]["ipam"]["config"]]  # fmt: skip
    assert any(ipaddress.ip_address(proxy_address) in subnet for subnet in subnets)
    assert api_environment()["FORWARDED_ALLOW_IPS"] == proxy_address


def test_the_api_runs_in_production_with_a_secret_of_its_own() -> None:
    environment = api_environment()
    assert environment["ENV"] == "production"
    # ${VAR:?message}: compose refuses to start without it; ${VAR:-default} would not.
    assert re.fullmatch(r"\$\{JWT_SECRET:\?[^}]+\}", environment["JWT_SECRET"])


def test_the_api_environment_is_valid_settings() -> None:
    """What compose sets, the service accepts (a typo in a port or an address stops it)."""
    environment = {
        **api_environment(),
        "JWT_SECRET": "x" * 48,
        "WEBHOOK_SECRET_KEY": TEST_WEBHOOK_SECRET_KEY,
    }
    settings = Settings.from_environ(environment, dotenv=None)
    assert settings.metrics_port is not None
    assert settings.forwarded_allow_ips


def scrape_targets() -> list[tuple[str, str]]:
    config = load_yaml(PROMETHEUS_PATH)
    return [
        (job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", ())
        for target in static["targets"]
    ]


def test_prometheus_scrapes_the_api_metrics_port() -> None:
    assert ("/metrics", f"api:{api_environment()['METRICS_PORT']}") in scrape_targets()


def test_the_worker_service_alone_runs_workers() -> None:
    """The api serves without a worker of its own (`run` would start one beside it), so the
    payments are settled by the worker service alone, built from the same image."""
    services = compose()["services"]
    assert services["api"]["command"] == ["python", "-m", "payments", "serve"]
    worker = services["worker"]
    assert worker["command"] == ["python", "-m", "payments", "worker"]
    assert worker["build"] == services["api"]["build"]
    assert not worker.get("ports"), "the worker publishes a port"
    depends = worker["depends_on"]
    assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    assert depends["api"]["condition"] == "service_healthy"  # the api has migrated


def test_the_worker_runs_in_production_with_the_apis_servers_and_secret() -> None:
    environment = environment_of("worker")
    assert environment["ENV"] == "production"
    assert re.fullmatch(r"\$\{JWT_SECRET:\?[^}]+\}", environment["JWT_SECRET"])
    assert re.fullmatch(r"\$\{WEBHOOK_SECRET_KEY:\?[^}]+\}", environment["WEBHOOK_SECRET_KEY"])
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "WEBHOOK_SECRET_KEY", "ENV"):
        assert environment[name] == api_environment()[name], name


def test_prometheus_scrapes_the_worker_metrics_port() -> None:
    """The worker's metrics listener is reachable from Prometheus: on every interface of its
    container, on the port Prometheus scrapes."""
    environment = {
        **environment_of("worker"),
        "JWT_SECRET": "x" * 48,
        "WEBHOOK_SECRET_KEY": TEST_WEBHOOK_SECRET_KEY,
    }
    settings = Settings.from_environ(environment, dotenv=None)
    assert settings.metrics_port is not None
    assert settings.host == "0.0.0.0"
    assert ("/metrics", f"worker:{settings.metrics_port}") in scrape_targets()


def test_every_panel_uses_the_provisioned_datasource() -> None:
    for filename, dashboard in dashboards():
        for panel in panels(dashboard):
            if panel.get("type") == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (filename, panel["title"])
            for target in panel.get("targets", ()):
                assert target["datasource"]["uid"] == DATASOURCE_UID, (filename, panel["title"])


def test_every_metric_in_a_panel_is_one_the_service_exports() -> None:
    exported = set().union(*exported_series().values())
    for filename, dashboard in dashboards():
        found = expressions(dashboard)
        assert found, f"{filename} has no query"
        unknown = {name for expression in found for name in used_names(expression)} - exported
        assert not unknown, (
            f"{filename} queries metrics payments/platform/metrics.py does not export: {unknown}"
        )


def test_every_exported_metric_has_a_panel() -> None:
    """A metric added to payments/platform/metrics.py gets a panel too."""
    used = {
        name
        for _, d in dashboards()
        for expression in expressions(d)
        for name in used_names(expression)
    }
    unshown = {family for family, names in exported_series().items() if not names & used}
    assert not unshown, f"no panel shows {sorted(unshown)}"
