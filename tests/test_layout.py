"""The package boundaries of the design, checked on the source: who may import whom (and no
package cycle, counting imports inside functions), modules small enough to read, and one
writer for each status."""

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


def _every_import(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import stands (in a function, under
    ``TYPE_CHECKING``), relative imports resolved; ``from a import b`` counts ``a.b`` too."""
    package = _name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _unit(module: str) -> str | None:
    """The node of the package graph a module belongs to: a sub-package of ``server``
    (``server.api``), a top-level module (``server.runtime``), ``worker`` or ``models``."""
    parts = module.split(".")
    if parts[0] in ("worker", "models"):
        return parts[0]
    if parts[0] != "server" or len(parts) < 2:
        return None
    return f"server.{parts[1]}"


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of the directed graph ``edges`` (``[]`` when there is none)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        path.append(node)
        for after in sorted(edges.get(node, ())):
            if found := visit(after):
                return found
        path.pop()
        done.add(node)
        return []

    for start in sorted(edges):
        if found := visit(start):
            return found
    return []


def test_packages_import_each_other_in_one_direction_only() -> None:
    """The package graph, counting every import (those inside functions too), has no
    cycle: a function-level import never hides one."""
    edges: dict[str, set[str]] = {}
    for package in ("server", "worker", "models"):
        for p in _modules(package):
            source = _unit(_name(p))
            assert source is not None
            targets = {_unit(i) for i in _every_import(p)} - {None, source, "server"}
            edges.setdefault(source, set()).update(t for t in targets if t is not None)
    assert len(edges) > 15  # every package was read
    assert _cycle(edges) == []


def test_no_two_modules_import_each_other() -> None:
    """Splitting a long module must not leave two halves that import each other."""
    imports = {
        _name(p).removesuffix(".__init__"): _every_import(p)
        for package in ("server", "worker", "models")
        for p in _modules(package)
    }
    circles = {
        frozenset({a, b})
        for a, found in imports.items()
        for b in found
        if b != a and b in imports and a in imports[b]
    }
    assert circles == set()


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) == []


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


STATUS_OWNERS = {
    "server.annotation.task_state": "AnnotationTask",
    "server.versions.state": "ModelVersion",
}


def _status_writes(path: Path) -> list[str]:
    """Where a module writes a ``status`` column: ``x.status = ...``, ``status=`` given to
    a row or to ``.values(...)``, a ``"status"`` key in a module that uses the task or
    version table, ``setattr``-like calls naming ``"status"``, SQL text that sets it."""
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    uses_tables = any(table in source for table in STATUS_OWNERS.values())
    where = _name(path) if path.is_relative_to(ROOT) else path.name
    found: list[str] = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                if any(isinstance(e, ast.Attribute) and e.attr == "status" for e in elements):
                    found.append(line)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("values", "insert", "update", *STATUS_OWNERS.values()) and any(
                k.arg == "status" for k in node.keywords
            ):
                found.append(line)
            if called in ("setattr", "set_committed_value", "set_attribute") and any(
                isinstance(a, ast.Constant) and a.value == "status" for a in node.args
            ):
                found.append(line)
            if called == "text" and any(
                isinstance(a, ast.Constant) and "set status" in str(a.value).lower()
                for a in node.args
            ):
                found.append(line)
        elif isinstance(node, ast.Dict) and uses_tables and "status" in _constants(node.keys):
            found.append(line)
    return found


def _constants(nodes: list[ast.expr | None]) -> set[object]:
    return {n.value for n in nodes if isinstance(n, ast.Constant)}


def test_task_and_version_status_have_one_writer_each() -> None:
    """Task status is written only by server.annotation.task_state, model-version status
    only by server.versions.state; everyone else calls them."""
    writes = [
        line
        for package in ("server", "worker")
        for p in _modules(package)
        if _name(p) not in STATUS_OWNERS
        for line in _status_writes(p)
    ]
    assert writes == []
    for owner in STATUS_OWNERS:
        assert _status_writes(ROOT / Path(*owner.split(".")).with_suffix(".py")), owner


def test_the_status_finder_sees_each_way_of_writing(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "task.status = 'open'\n"
        "task.status, task.updated_at = 'labelled', now\n"
        "update(AnnotationTask).values(status='retired')\n"
        "ModelVersion(kind='ae', status='training')\n"
        "rows = [{'status': 'open'}]\n"
        "set_committed_value(task, 'status', 'labelled')\n"
        "session.execute(text('UPDATE annotation_tasks SET status = 1'))\n"
    )
    assert len(_status_writes(sample)) == 7
