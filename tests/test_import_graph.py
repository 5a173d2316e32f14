"""No import loop between tfmrcnn modules, counting the imports inside functions (which hide a
loop from Python but not from the design: layers <-> norm, catalog <-> coco, norm <->
distributed were such loops)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph():
    """{module: tfmrcnn modules it imports anywhere in its file}."""
    files = {_module_name(p): p for p in (ROOT / "tfmrcnn").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)  # submodules
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _cycle_through(graph, start):
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_the_graph_sees_function_local_imports():
    graph = _import_graph()
    # the CLI imports its building blocks inside main() (a fast --help)
    assert "tfmrcnn.engine.trainer" in graph["tfmrcnn.cli.train"]
    assert "tfmrcnn.modeling.layers" in graph["tfmrcnn.modeling.norm"]


def test_no_import_loops():
    graph = _import_graph()
    loops = [_cycle_through(graph, m) for m in sorted(graph)]
    assert not [loop for loop in loops if loop], " ; ".join(
        " -> ".join(loop) for loop in loops if loop)
