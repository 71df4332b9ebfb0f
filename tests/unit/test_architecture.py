"""The layout's rules, checked on the source with ``ast``: no import cycles, a pure core, the demo kept
out of the deployment's campaign folder, runtime dependencies declared."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "plugins" / "audience_sync"

#: What ``core`` may not import: Airflow, and every layer of the package that stands on Airflow.
CORE_FORBIDDEN = (
    "airflow",
    "audience_sync.destinations",
    "audience_sync.hooks",
    "audience_sync.operators",
    "audience_sync.sandbox",
    "audience_sync.cli",
    "audience_sync.demo",
    "audience_sync.factory",
    "audience_sync.runner",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_nodes(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level and inside functions, not ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path) -> set[str]:
    """The modules ``name`` imports (absolute names; ``from pkg import module`` counts as the module)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative import: resolve against this module's package
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            found.add(candidate if candidate in MODULES else base)
    return found


GRAPH: dict[str, set[str]] = {name: imports_of(name, path) for name, path in MODULES.items()}


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (or a module importing itself), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import() -> None:
    source = "def f():\n    from audience_sync.cli import main\n"
    tree_imports = {n.module for n in _import_nodes(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert tree_imports == {"audience_sync.cli"}
    graph = {"a": {"b"}, "b": {"c", "os"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_the_package() -> None:
    assert "audience_sync.core.campaign" in MODULES and "audience_sync.sandbox.base" in MODULES
    assert "audience_sync.core.campaign.models" in GRAPH["audience_sync.core.campaign.loading"]
    assert "audience_sync.runner" in GRAPH["audience_sync.cli"]  # a function-level import


def test_no_import_cycles() -> None:
    assert find_cycles(GRAPH) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("audience_sync.core")))
def test_core_imports_neither_airflow_nor_the_airflow_layers(module: str) -> None:
    bad = sorted(
        target
        for target in GRAPH[module]
        if any(target == f or target.startswith(f + ".") for f in CORE_FORBIDDEN)
    )
    assert bad == [], f"{MODULES[module].relative_to(ROOT)} imports {bad}"


def test_the_core_lint_rule_bans_airflow() -> None:
    config = tomllib.loads((PACKAGE / "core" / "ruff.toml").read_text(encoding="utf-8"))
    assert (PACKAGE / "core" / config["extend"]).resolve() == ROOT / "pyproject.toml"
    assert "TID251" in config["lint"]["extend-select"]
    assert set(config["lint"]["flake8-tidy-imports"]["banned-api"]) == set(CORE_FORBIDDEN)


def test_the_deployment_campaign_folder_holds_no_demo() -> None:
    deployed = ROOT / "include" / "campaigns"
    assert (deployed / "README.md").is_file()
    assert [p.name for p in deployed.iterdir() if p.suffix in (".yaml", ".yml")] == []
    assert (ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml").is_file()


def test_pyproject_declares_every_pinned_runtime_dependency_with_a_range_holding_the_pin() -> None:
    declared = {
        Requirement(r).name.lower(): Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
            "dependencies"
        ]
    }
    pins = [
        Requirement(line.split("#")[0].strip())
        for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.split("#")[0].strip()
    ]
    assert pins
    for pin in pins:
        (version,) = (s.version for s in pin.specifier)
        assert pin.name.lower() in declared, f"{pin.name} is pinned in requirements.txt but not declared"
        assert declared[pin.name.lower()].specifier.contains(version), (pin, declared[pin.name.lower()])


def _ledger_writes(tree: ast.AST) -> Iterable[tuple[ast.FunctionDef, ast.Call]]:
    """(function, call) for each ``ledger.update()`` / ``.insert()`` / ``.delete()`` in a module."""
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("update", "insert", "delete")
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "ledger"
                ):
                    yield fn, node


def test_every_write_of_ledger_rows_moves_the_ledger_generation() -> None:
    # core/delta.py trusts rows reused by fingerprint while the audience's ledger generation has not
    # moved: a write that did not move it would let a rerun skip a member it must look at
    writers = 0
    for path in (PACKAGE / "core").glob("*.py"):
        if path.name == "migrations.py":  # schema upgrades, before any run reads a generation
            continue
        tree = ast.parse(path.read_text())
        for fn, call in _ledger_writes(tree):
            writers += 1
            calls = {
                n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            }
            assert "ledger_moved" in calls, f"{path.name}:{call.lineno} writes ledger rows in {fn.name}()"
    assert writers >= 10  # the check sees the writes (apply_stage, uploads...)
