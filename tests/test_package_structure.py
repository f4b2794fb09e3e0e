"""The package's shape: imports run one way through its groups (no cycles), builders stand
alone, and no function grows past 100 lines. Read from the source (ast), nothing imported."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cspsr_tf"
# Lower groups never import higher ones: data flows util/ops -> data -> model -> train ->
# infer -> evaluate -> export -> the entry points (demo, predict, the package's from_preset).
LEVELS = {
    "util": 0, "presets": 0, "ops": 1, "data": 2, "model": 3, "train": 4, "infer": 5,
    "evaluate": 6, "export": 7, "demo": 8, "predict": 8, "": 8,
}
MAX_FUNCTION_LINES = 100


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path, name, known):
    """The cspsr_tf modules `path` imports anywhere (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cspsr_tf"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("cspsr_tf"):
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                found.add(candidate if candidate in known else module)
    return {m for m in found if m in known and m != name}


def _graph():
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _group(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_follow_the_data_flow():
    wrong = [
        f"{name} ({_group(name) or 'top'}) imports {target} ({_group(target)})"
        for name, targets in _graph().items()
        for target in targets
        if LEVELS[_group(target)] > LEVELS[_group(name)]
    ]
    assert not wrong, "imports against the data flow:\n" + "\n".join(sorted(wrong))


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return result


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_sees_a_cycle_through_a_third_module():
    # The check above must be able to fail.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_graph_sees_imports_inside_functions():
    graph = _graph()
    # savedmodel_export imports runtime inside export_from_path only.
    assert "cspsr_tf.model.runtime" in graph["cspsr_tf.export.savedmodel_export"]


@pytest.mark.parametrize("builder", sorted(p.name for p in (ROOT / "datasets").iterdir()
                                           if (p / "__init__.py").exists()))
def test_dataset_builders_stand_alone(builder):
    # A builder may use the pure helpers (util, ops, data) but never the model or training.
    allowed = {"util", "ops", "data"}
    for path in (ROOT / "datasets" / builder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cspsr_tf."):
                assert node.module.split(".")[1] in allowed, f"{path.name} imports {node.module}"


def test_no_function_longer_than_100_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps:\n" + "\n".join(long)
