"""FX's settings: how long a quote holds, where the rates come from, how old a rate may be."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from payments.platform.settings import Env, Section, parse_duration_s

DEVELOPMENT_RATES_FILE = Path(__file__).resolve().parent / "rates.json"


class FxSettings(Section):
    # A quote's rate is locked this long; the database's clock decides when it has run out.
    fx_quote_ttl_s: Annotated[int, Env("FX_QUOTE_TTL", parse_duration_s), Field(ge=1)] = 60
    # The JSON rates file the default rate source reads (read again whenever it changes).
    fx_rates_file: Annotated[Path, Env("FX_RATES_FILE")] = DEVELOPMENT_RATES_FILE
    # Rates whose as_of is older than this are not quoted (503): never a stale rate.
    fx_max_rate_age_s: Annotated[int, Env("FX_MAX_RATE_AGE", parse_duration_s), Field(ge=1)] = 3600
