"""Every library the platform and its benchmarks import is a declared, pinned dependency, and every
declared one is used: a package that only arrives through another one can vanish with its next release."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Used by Dagster or the venv rather than imported: the UI server, MySQL instance storage (named in
# deploy/dagster.mysql.yaml), the dg CLI, the fakesnow server's extra.
USED_WITHOUT_IMPORT = {"dagster-webserver", "dagster-mysql", "dagster-dg-cli"}
# Named by the platform's users as a required package; the README says why MLflow logging goes through
# MlflowClient instead of its resource (a test shows the resource leaving its run RUNNING).
REQUIRED_BY_USERS = {"dagster-mlflow"}


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>~!; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


OURS = ("crypto_platform", "crypto_platform_tests", "benchmarks")


def imported_modules(*folders: str) -> dict[str, set[str]]:
    """Third-party top-level module -> files importing it, under ``folders``."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (PROJECT_DIR / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for top in {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - set(OURS):
                    found.setdefault(top, set()).add(str(path.relative_to(PROJECT_DIR)))
    return found


@functools.cache
def _distributions_by_module() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def providers(module: str) -> set[str]:
    """The installed distributions that provide ``module`` (several for namespaces such as snowflake)."""
    dists = _distributions_by_module().get(module, [module])
    return {d.lower().replace("_", "-") for d in dists}


def test_every_import_is_a_declared_pinned_dependency_and_every_dependency_is_used() -> None:
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    declared = {_name(r): r for r in project["dependencies"]}
    test_extra = {_name(r): r for r in project["optional-dependencies"]["test"]}

    platform = imported_modules("crypto_platform")
    missing = {m: sorted(files)[:3] for m, files in platform.items() if not providers(m) & set(declared)}
    assert not missing, f"imported but not declared in [project] dependencies: {missing}"

    # Tests and benchmarks run in the development environment: the dependencies plus the test extra.
    tests = imported_modules("crypto_platform_tests", "benchmarks")
    known = set(declared) | set(test_extra)
    missing_in_tests = {m: sorted(files)[:3] for m, files in tests.items() if not providers(m) & known}
    assert not missing_in_tests, f"imported by tests but declared nowhere: {missing_in_tests}"

    runnable = imported_modules("crypto_platform", "benchmarks")  # benchmarks drive the platform's own clients
    used = set().union(*(providers(m) for m in runnable)) | USED_WITHOUT_IMPORT | REQUIRED_BY_USERS
    assert not set(declared) - used, f"declared but never imported by the platform: {sorted(set(declared) - used)}"
    assert (
        not set(test_extra)
        - set().union(*(providers(m) for m in tests))
        - {"ruff", "mypy", "pytest-timeout", "pytest-asyncio"}
    ), "a test extra nothing uses"

    for requirement in [*declared.values(), *test_extra.values()]:
        pinned = re.search(r"==|~=|<", requirement)
        assert pinned, f"{requirement!r} is not pinned: use == or a range with an upper bound"
