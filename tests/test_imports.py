"""The package's import graph has no cycle, counting imports inside functions too (read from the source
with ast, so nothing is imported to check it). Edges from a module to its own parent packages are left
out: Python initialises those first whatever the module imports."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pruning"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """pruning module → the pruning modules it imports anywhere in its file."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, path.name == "__init__.py", node)
                # `from . import x` names a submodule when x is one
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names]
            else:
                continue
            # a package is initialised before its submodules, so a submodule reading its own package
            # (`from . import __version__`) is no cycle
            edges |= {t for t in targets if t in files and not (module + ".").startswith(t + ".")}
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "pruning.core.heterogeneous" in graph and "pruning.export.gguf" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_format_module_imports_neither_modeling_nor_structure():
    graph = import_graph()
    assert not graph["pruning.core.heterogeneous"] & {"pruning.core.modeling", "pruning.core.surgery"}
    assert "pruning.core.surgery" not in graph["pruning.core.modeling"] and "pruning.core.modeling" not in graph["pruning.core.surgery"]


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


# The package's layers, lowest first: a module may import its own layer and the layers below it, never one above.
LAYERS = (
    ("pruning.core",),
    ("pruning.training",),
    ("pruning.methods",),
    ("pruning.export",),
    ("pruning.evaluation",),
    ("pruning.reporting",),
    ("pruning.api", "pruning.pruner", "pruning.preflight"),
    ("pruning.compat",),
    ("pruning.cli", "pruning.commands", "pruning.__main__"),
)


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if layer_of(module) is not None and layer_of(target) is not None
                  and layer_of(target) > layer_of(module))


def test_every_module_belongs_to_a_layer_and_the_root_holds_only_front_doors():
    graph = import_graph()
    assert [m for m in graph if m != "pruning" and layer_of(m) is None] == []
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 6, root_modules


def test_no_layer_imports_a_layer_above_it():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"pruning.core.io": {"pruning.methods.base"}, "pruning.methods.base": {"pruning.core.io"}}) \
        == ["pruning.core.io -> pruning.methods.base"]


def test_every_name_imported_inside_the_package_exists():
    """Imports inside functions run only when the function does: a name moved to another module would fail
    there, at run time. Every `from pruning... import name` is checked here against the module it names."""
    import importlib

    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    missing = []
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _resolve(module, path.name == "__init__.py", node)
            if target not in files or target.endswith("__main__"):
                continue
            imported = importlib.import_module(target)
            missing += [f"{module}: {target}.{a.name}" for a in node.names
                        if not hasattr(imported, a.name) and f"{target}.{a.name}" not in files]
    assert missing == []
