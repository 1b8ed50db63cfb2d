"""make contract-check: openapi.yaml as a generated client sees it. openapi-python-client must
generate a client without a single warning, the client must import, and every error response of
every operation must parse into one Problem model, whatever its code (a code added later too)."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "openapi.yaml"
PACKAGE = "payments_client"
METHODS = {"get", "post", "put", "patch", "delete"}
# /openapi.yaml is served as application/yaml; the generator knows JSON, text and bytes only, and
# a YAML document is text to a client that does not parse it.
GENERATOR_CONFIG = {"content_type_overrides": {"application/yaml": "text/plain"}}
PROBLEM_FIELDS = {"type_", "title", "status"}
UNKNOWN_CODE = "a_code_added_later"


def generate(output: Path) -> list[str]:
    """Generate the client into `output`; the generator's own output, and what was wrong with it."""
    config = output.parent / "generator.yaml"
    config.write_text(yaml.safe_dump(GENERATOR_CONFIG), encoding="utf-8")
    bin_dir = Path(sys.executable).parent
    command = [
        str(bin_dir / "openapi-python-client"), "generate", "--path", str(SPEC_PATH),
        "--output-path", str(output), "--overwrite", "--meta", "none", "--config", str(config),
        "--fail-on-warning",
    ]  # fmt: skip
    # The generator formats its output with ruff, which lives beside this interpreter.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    printed = done.stdout + done.stderr
    print(printed, end="")
    faults = []
    if done.returncode != 0:
        faults.append(f"openapi-python-client exited {done.returncode}")
    if re.search(r"warning|error", printed, re.IGNORECASE):
        faults.append("openapi-python-client printed a warning or an error")
    return faults


def snake(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


def load(scratch: Path) -> tuple[ModuleType, dict[str, ModuleType]]:
    """The generated package and its operation modules by name: importing each proves it loads."""
    sys.path.insert(0, str(scratch))
    package = importlib.import_module(PACKAGE)
    operations = {}
    for found in pkgutil.walk_packages(package.__path__, f"{PACKAGE}."):
        module = importlib.import_module(found.name)
        if found.name.startswith(f"{PACKAGE}.api.") and not found.ispkg:
            operations[found.name.rsplit(".", 1)[1]] = module
    return package, operations


def problem_models(models: ModuleType) -> list[str]:
    """Every generated model shaped like a problem document (type, title and status)."""
    return sorted(
        name
        for name, value in vars(models).items()
        if inspect.isclass(value)
        and attrs.has(value)
        and {field.name for field in attrs.fields(value)} >= PROBLEM_FIELDS
    )


def check_errors_parse(package: ModuleType, operations: dict[str, ModuleType]) -> list[str]:
    """Each operation's declared 4xx and 5xx parse into Problem, with an unknown code and an
    extension member kept."""
    problem = importlib.import_module(f"{PACKAGE}.models").Problem
    client = importlib.import_module(f"{PACKAGE}.client").Client(
        base_url="http://testserver", raise_on_unexpected_status=True
    )
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    faults = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            module = operations.get(snake(operation["operationId"]))
            if module is None:
                faults.append(f"{method.upper()} {path}: no generated module")
                continue
            for status in (int(s) for s in operation["responses"] if int(s) >= 400):
                body = {
                    "type": f"/problems/{UNKNOWN_CODE}", "title": "New", "status": status,
                    "code": UNKNOWN_CODE, "detail": "d", "tier": "a_tier_added_later",
                }  # fmt: skip
                response = httpx.Response(
                    status, json=body, headers={"Content-Type": "application/problem+json"}
                )
                try:
                    parsed = module._parse_response(client=client, response=response)
                except Exception as error:  # any failure to parse is the finding
                    faults.append(f"{method.upper()} {path} {status}: raised {error!r}")
                    continue
                if not isinstance(parsed, problem):
                    faults.append(f"{method.upper()} {path} {status}: {type(parsed).__name__}")
                elif parsed.code != UNKNOWN_CODE or "tier" not in parsed.additional_properties:
                    faults.append(f"{method.upper()} {path} {status}: lost the code or `tier`")
    return faults


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        faults = generate(Path(scratch) / PACKAGE)
        if not faults:
            package, operations = load(Path(scratch))
            models = importlib.import_module(f"{PACKAGE}.models")
            shaped = problem_models(models)
            print(f"contract-check: {len(operations)} operations, {len(shaped)} problem models")
            if shaped != ["Problem"]:
                faults.append(f"one error model, Problem, was expected; found {shaped[:5]}...")
            else:
                faults += check_errors_parse(package, operations)
    for fault in faults:
        print(f"contract-check: {fault}", file=sys.stderr)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
