"""The package boundaries of the design, checked on the source: who may import whom, and
modules small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_models_import_neither_server_nor_worker() -> None:
    bad = {
        _name(p): sorted(i for i in _imports(p) if i.split(".")[0] in ("server", "worker"))
        for p in _modules("models")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_the_cli_imports_the_simulation_package() -> None:
    bad = {
        _name(p): sorted(i for i in _imports(p) if i.startswith("server.sim"))
        for p in _modules("server")
        if not _name(p).startswith(("server.sim", "server.cli"))
    }
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("package", ["server.api", "server.cli", "server.main"])
def test_the_api_and_cli_never_import_worker_code(package: str) -> None:
    paths = [p for p in _modules("server") if _name(p).startswith(package)]
    bad = {_name(p): sorted(i for i in _imports(p) if i.startswith("worker")) for p in paths}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_module_is_over_400_lines() -> None:
    long = {
        _name(p): n
        for package in ("server", "worker", "models")
        for p in _modules(package)
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_server_package_says_what_lives_there() -> None:
    missing = [
        _name(init.parent)
        for init in (ROOT / "server").rglob("__init__.py")
        if ast.get_docstring(ast.parse(init.read_text())) is None
    ]
    assert missing == []


def test_every_job_kind_has_its_steps_in_the_registry() -> None:
    from server.jobs.kinds import JobKind
    from server.jobs.registry import REGISTRY, resolve

    assert set(REGISTRY) == set(JobKind)
    for spec in REGISTRY.values():
        for ref in (spec.run, spec.follows, spec.chunks_done, spec.check):
            if ref is not None:
                assert callable(resolve(ref)), ref
