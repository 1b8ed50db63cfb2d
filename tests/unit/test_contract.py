"""openapi.yaml is the contract: it and the app serve the same operations and the same codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from payments.app import routes
from payments.http.errors import CATALOG

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS = {"get", "post", "put", "patch", "delete"}


def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return loaded


def test_every_route_has_an_operation_and_every_operation_a_route() -> None:
    served = {
        (method, route.path)
        for route in routes()
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (method.upper(), path)
        for path, item in spec()["paths"].items()
        for method in item
        if method in METHODS
    }
    assert served == documented


def test_the_problem_codes_are_the_catalog() -> None:
    assert set(spec()["components"]["schemas"]["ProblemCode"]["enum"]) == set(CATALOG)
