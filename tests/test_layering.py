"""Imports go one way: blocks (lib/*.py) <- models <- engine (lib/engine) <- entry points (train_*.py) and tools.

Read from the source with ast (nothing is imported), so a cycle hidden by an import inside a function is found too.
"""
import ast
import os

from conftest import ROOT


def module_name(path):
    relative = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
    return ".".join(relative[:-1] if relative[-1] == "__init__" else relative)


def python_files(*folders):
    for folder in folders:
        for parent, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            yield from (os.path.join(parent, name) for name in sorted(files) if name.endswith(".py"))


def imported_names(path):
    """Every module path an import statement of the file names (anywhere in it), resolved to absolute names."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module_name(path) if path.endswith("__init__.py") else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up node.level - 1 packages from this one
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_imports(path, modules):
    """The project modules the file imports (an imported name that is a module's attribute counts as its module)."""
    found = set()
    for name in imported_names(path):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    found.discard(module_name(path))
    return found


def find_cycle(graph):
    """One import cycle of graph {module: {modules}} as a list, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def graph_of(folder):
    files = list(python_files(folder))
    modules = {module_name(path): path for path in files}
    # a package's modules import through it: `import lib.x` runs lib/__init__.py, which is not an edge to cut
    return {name: {m for m in project_imports(path, modules) if not name.startswith(m + ".")}
            for name, path in modules.items()}


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_lib_or_models():
    graph = graph_of("lib")
    graph.update(graph_of("models"))
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_models_and_blocks_never_import_the_engine():
    block_modules = [os.path.join(ROOT, "lib", name) for name in os.listdir(os.path.join(ROOT, "lib"))
                     if name.endswith(".py")]
    offenders = [os.path.relpath(path, ROOT) for path in list(python_files("models")) + block_modules
                 if any(name == "lib.engine" or name.startswith("lib.engine.") for name in imported_names(path))]
    assert not offenders, f"import the engine (models and blocks come before it): {offenders}"
