"""The image carries every file the app reads at run time, where the code looks for it: the
package, its SQL, the migrations and the contract. The paths come from the code itself (every
module-level Path of the package that points into the repository), so a file the app starts to
read is checked here without anyone listing it."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import payments

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PACKAGE = PurePosixPath("payments")


@dataclass(frozen=True)
class Copy:
    """One source of a COPY (or ADD) from the build context, and where it lands in the image."""

    source: PurePosixPath  # relative to the build context (the repository root)
    target: PurePosixPath  # absolute, in the image
    into_folder: bool  # the target is a folder the source goes into (or whose contents it fills)

    def lands(self, path: PurePosixPath) -> PurePosixPath | None:
        """Where the repository's `path` ends up in the image through this copy, if it does."""
        if (ROOT / self.source).is_dir():
            if path == self.source or self.source in path.parents or self.source.parts == ():
                return self.target / path.relative_to(self.source)
            return None
        if path != self.source:
            return None
        return self.target / path.name if self.into_folder else self.target


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction, continuation lines joined, comments skipped."""
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            yield keyword.upper(), arguments.strip()


def image_layout(text: str) -> tuple[list[Copy], PurePosixPath]:
    """Every copy from the build context, and the final WORKDIR (where CMD runs)."""
    copies: list[Copy] = []
    workdir = PurePosixPath("/")
    for keyword, arguments in instructions(text):
        if keyword == "WORKDIR":
            workdir = workdir / arguments
        if keyword not in {"COPY", "ADD"}:
            continue
        flags: list[str] = []
        while arguments.startswith("--"):
            flag, _, arguments = arguments.partition(" ")
            flags.append(flag)
            arguments = arguments.lstrip()
        if any(flag.startswith("--from=") for flag in flags):
            continue  # from another stage or image, not from the build context
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        *sources, target = words
        into_folder = target.endswith("/") or len(sources) > 1
        for source in sources:
            copies.append(
                Copy(PurePosixPath(source.rstrip("/") or "."), workdir / target, into_folder)
            )
    return copies, workdir


def lands(copies: list[Copy], path: PurePosixPath) -> PurePosixPath | None:
    """Where `path` ends up in the image; a later copy overwrites an earlier one."""
    return next((found for copy in reversed(copies) if (found := copy.lands(path))), None)


def paths_the_package_reads() -> set[PurePosixPath]:
    """Module-level Paths of every payments module that point into the repository (not into the
    virtualenv, where the dependencies keep their own files), and the package's data files."""
    found: set[PurePosixPath] = set()
    virtualenv = Path(sys.prefix).resolve()
    for module_info in pkgutil.walk_packages(payments.__path__, "payments."):
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if not isinstance(value, Path) or not value.is_absolute():
                continue
            if value.is_relative_to(ROOT) and not value.is_relative_to(virtualenv):
                found.add(PurePosixPath(value.relative_to(ROOT).as_posix()))
    package_dir = ROOT / PACKAGE
    for path in package_dir.rglob("*"):
        if (
            path.is_file()
            and path.suffix not in {".py", ".pyc"}
            and "__pycache__" not in path.parts
        ):
            found.add(PurePosixPath(path.relative_to(ROOT).as_posix()))
    return found


def test_the_package_runs_from_the_copy_in_the_workdir() -> None:
    """`python -m payments` imports the package from the working directory, so the copy there
    (not the one pip installed) is the one whose paths count."""
    copies, workdir = image_layout(DOCKERFILE.read_text(encoding="utf-8"))
    assert lands(copies, PACKAGE) == workdir / PACKAGE
    assert re.search(r'^CMD \["python", "-m", "payments"', DOCKERFILE.read_text(), re.MULTILINE)


def test_every_file_the_package_reads_is_copied_where_it_looks() -> None:
    copies, workdir = image_layout(DOCKERFILE.read_text(encoding="utf-8"))
    needed = paths_the_package_reads()
    # The scan must see what we know the app reads, or it sees nothing at all.
    assert {PurePosixPath("openapi.yaml"), PurePosixPath("sql"), PurePosixPath("payments/money/queries.sql"), PurePosixPath("payments/http/admission.lua")} <= needed  # fmt: skip
    # Paths in the code are relative to the package's folder, so the image keeps the layout.
    missing = {str(path) for path in needed if lands(copies, path) != workdir / path}
    assert not missing, f"the Dockerfile does not copy these where the app reads them: {missing}"


def test_the_build_context_leaves_out_nothing_the_app_reads() -> None:
    """.dockerignore keeps the virtualenv and the data folder out of the build context; none of
    its patterns may match a file the app reads."""
    patterns = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]  # fmt: skip
    assert ".venv" in patterns
    assert ".data" in patterns
    for path in paths_the_package_reads():
        for prefix in (path, *path.parents):
            assert not any(prefix.match(pattern) for pattern in patterns), (path, patterns)
