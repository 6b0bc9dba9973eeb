"""The architecture rules, checked rather than hoped for."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINTED = [d for d in ("klockproxy", "addons", "tests", "benchmarks") if (ROOT / d).exists()]


def _tool(name: str) -> str:
    # Prefer the tool installed beside this interpreter (the venv CI builds).
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"{name} is not installed (it is in the [test] extra)"
    return found


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=root, capture_output=True, text=True, env=env
    )


def test_import_contracts_hold() -> None:
    """Core <- cluster <- judge <- modes <- commands; the sandbox stays apart."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", result.stdout)
    assert kept and int(kept.group(1)) >= 5, result.stdout


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("core/types.py", "klockproxy.cluster.upstream"),  # the core imports an adapter
        ("cluster/identity.py", "klockproxy.judge"),  # a lower layer imports a higher one
        ("judge/deciding.py", "mitmproxy.http"),  # the judge must serve the webhook too
        ("sandbox/store.py", "klockproxy.judge"),  # the oracle shares the code under test
        ("proxy/addon.py", "klockproxy.sandbox.server"),  # the proxy starts a sandbox
        ("metrics.py", "klockproxy.proxy.addon"),  # a shared piece knows a mode
    ],
)
def test_import_contracts_catch_a_violation(tmp_path: Path, module: str, imported: str) -> None:
    """The contracts are not vacuous: one forbidden import breaks them."""
    shutil.copytree(ROOT / "klockproxy", tmp_path / "klockproxy")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "klockproxy" / module
    target.write_text(target.read_text() + f"\nimport {imported}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert re.search(r"Contracts: \d+ kept, [1-9]\d* broken", result.stdout), result.stdout


def test_ruff_lint_and_format_are_clean() -> None:
    lint = subprocess.run(
        [_tool("ruff"), "check", *LINTED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [_tool("ruff"), "format", "--check", *LINTED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_is_clean_on_the_package() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _declared_requirements() -> set[str]:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {Requirement(r).name for r in project["dependencies"]}
    return {n.lower().replace("_", "-") for n in names}


def test_every_imported_library_is_declared() -> None:
    """A library the package imports must be a declared dependency, not a transitive one."""
    import ast
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    imported: dict[str, str] = {}
    for path in (ROOT / "klockproxy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "klockproxy" and top not in sys.stdlib_module_names:
                    imported.setdefault(top, str(path.relative_to(ROOT)))
    declared = _declared_requirements()
    missing = {
        top: where
        for top, where in imported.items()
        if not {d.lower().replace("_", "-") for d in distributions.get(top, [top])} & declared
    }
    assert not missing, f"imported but not declared in pyproject dependencies: {missing}"
