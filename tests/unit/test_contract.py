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
    """The codes are listed as an open set, so that a generated client accepts codes added later."""
    code = spec()["components"]["schemas"]["ProblemCode"]
    assert "enum" not in code
    assert set(code["x-extensible-enum"]) == set(CATALOG)


def responses() -> list[tuple[str, str, str, dict[str, Any]]]:
    """Every response of every operation, with component responses resolved."""
    document = spec()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = document["components"]["responses"][response["$ref"].split("/")[-1]]
                found.append((method.upper(), path, status, response))
    return found


def test_every_error_is_the_one_problem_schema() -> None:
    """One error model for generated clients: no inline or composed error schemas."""
    for method, path, status, response in responses():
        if int(status) < 400:
            continue
        content = response["content"]
        assert list(content) == ["application/problem+json"], (method, path, status)
        schema = content["application/problem+json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, status)


def test_every_operation_takes_and_every_response_carries_the_request_id() -> None:
    for item in spec()["paths"].values():
        for method, operation in item.items():
            if method in METHODS:
                assert {"$ref": "#/components/parameters/XRequestId"} in operation["parameters"]
    for method, path, status, response in responses():
        assert "X-Request-ID" in response["headers"], (method, path, status)
        if path.startswith("/api/v1/"):
            assert "Cache-Control" in response["headers"], (method, path, status)
