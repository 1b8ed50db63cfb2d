"""The service's settings: every domain's section in one object, read once at start-up from the
environment (and `.env`). Each field that an operator may set names its variable once, in its
section; every value is validated here, and an invalid one stops the service."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet
from pydantic import SecretStr, ValidationError

from payments.admin.settings import AdminSettings
from payments.fx.settings import FxSettings
from payments.http.settings import HttpSettings
from payments.identity.settings import IdentitySettings
from payments.money.settings import MoneySettings
from payments.payments.settings import PaymentSettings
from payments.payroll.settings import PayrollSettings
from payments.platform.settings import Env, PlatformSettings, SettingsError, read_dotenv
from payments.webhooks.settings import WebhookSettings


class Settings(
    PlatformSettings,
    HttpSettings,
    IdentitySettings,
    MoneySettings,
    PaymentSettings,
    FxSettings,
    PayrollSettings,
    AdminSettings,
    WebhookSettings,
):
    """Defaults serve a developer on a fresh machine."""

    @property
    def opening_balance_text(self) -> str:
        """The opening balance in force: the setting, or the environment's default (money enters
        production only through deposits)."""
        if self.opening_balance is not None:
            return self.opening_balance
        return "0" if self.env == "production" else "1000.00"

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, dotenv: Path | None = Path(".env")
    ) -> Settings:
        """Read every field's variable; the environment wins over `.env`. An invalid value stops
        here, with a message that names the variable and never the value."""
        env = {**(read_dotenv(dotenv) if dotenv else {}), **environ}
        fields: dict[str, object] = {}
        variables: dict[str, str] = {}
        for name, info in cls.model_fields.items():
            marker = next((m for m in info.metadata if isinstance(m, Env)), None)
            if marker is None:
                continue
            variables[name] = marker.variable
            if env.get(marker.variable):
                fields[name] = marker.parse(marker.variable, env[marker.variable])
        try:
            settings = cls.model_validate(fields)
        except ValidationError as error:
            names = set()
            for problem in error.errors(include_input=False, include_url=False):
                field = str(problem["loc"][0]) if problem["loc"] else ""
                field = field or str(problem.get("msg", "")).partition(":")[0].split()[-1]
                names.add(variables.get(field, field.upper()))
            raise SettingsError(f"invalid settings: {', '.join(sorted(names))}") from None
        return settings.with_jwt_secret().with_webhook_secret_key()

    def with_jwt_secret(self) -> Settings:
        """Production must bring its own key; development keeps one generated key per data folder."""
        if self.jwt_secret.get_secret_value():
            return self
        if self.env == "production":
            raise SettingsError("JWT_SECRET is required when ENV=production")
        path = self.data_dir / "jwt_secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48), encoding="utf-8")
            path.chmod(0o600)
        return self.model_copy(update={"jwt_secret": SecretStr(path.read_text(encoding="utf-8"))})

    def with_webhook_secret_key(self) -> Settings:
        """As the JWT key: production brings its own, development keeps one per data folder."""
        if self.webhook_secret_key.get_secret_value():
            return self
        if self.env == "production":
            raise SettingsError("WEBHOOK_SECRET_KEY is required when ENV=production")
        path = self.data_dir / "webhook_secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(Fernet.generate_key().decode(), encoding="utf-8")
            path.chmod(0o600)
        key = SecretStr(path.read_text(encoding="utf-8").strip())
        return self.model_copy(update={"webhook_secret_key": key})
