"""The library layer (vssflow/) never imports the orchestration stack (STYLE.md rule 1, DESIGN.md "Two layers").

Not by an import statement, not by ``importlib.import_module`` / ``__import__`` (which no check can see through, so
the library makes none), and not by a string naming a ``pipelines`` module (``"pipelines.serve"``,
``"pipelines.serve:build_app"``): imports run one way, CLI and services -> pipelines/ -> vssflow/. And no module of
either layer imports itself through others (issue 14: circles that worked in only one import order).
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"ray", "deepspeed", "mlflow", "pipelines"}
ROOT = Path(__file__).resolve().parents[1] / "vssflow"
_MODULE_STRING = re.compile(r"^\s*(ray|deepspeed|mlflow|pipelines)(\.\w+)*(:[\w.]+)?\s*$")
_DYNAMIC = {"import_module", "__import__"}


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _module_strings(tree: ast.AST) -> set[str]:
    """String constants that are the name of an orchestration module (or a ``module:attribute`` spec)."""
    return {
        n.value.strip()
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and _MODULE_STRING.match(n.value)
    }


def _dynamic_imports(tree: ast.AST) -> set[str]:
    """Calls (or mentions) of importlib.import_module / __import__."""
    found = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and n.attr in _DYNAMIC:
            found.add(n.attr)
        elif isinstance(n, ast.Name) and n.id in _DYNAMIC:
            found.add(n.id)
        elif isinstance(n, ast.ImportFrom) and n.module == "importlib" and {a.name for a in n.names} & _DYNAMIC:
            found.add("import_module")
    return found


def _offenders(check) -> dict[str, list[str]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        bad = check(ast.parse(path.read_text(), filename=str(path)))
        if bad:
            out[str(path.relative_to(ROOT.parent))] = sorted(bad)
    return out


def test_library_has_no_orchestration_imports():
    offenders = _offenders(lambda tree: _imports(tree) & FORBIDDEN)
    assert not offenders, f"vssflow/ must not import {sorted(FORBIDDEN)}: {offenders}"


def test_library_names_no_orchestration_module_in_a_string():
    offenders = _offenders(_module_strings)
    assert not offenders, f"vssflow/ must not name an orchestration module, even by string: {offenders}"


def test_library_imports_nothing_by_name_at_run_time():
    offenders = _offenders(_dynamic_imports)
    assert not offenders, f"vssflow/ must not import by name (importlib.import_module, __import__): {offenders}"


def test_the_checks_see_each_way_of_naming_a_module():
    code = (
        "import pipelines.serve\nfrom ray import serve\nimport importlib\n"
        "m = importlib.import_module('pipelines.serve')\nspec = 'pipelines.serve:build_app'\n"
        "doc = 'pipelines/serve.py resolves MLflow URIs'\n"
    )
    tree = ast.parse(code)
    assert _imports(tree) & FORBIDDEN == {"pipelines", "ray"}
    assert _module_strings(tree) == {"pipelines.serve", "pipelines.serve:build_app"}  # prose is not a module name
    assert _dynamic_imports(tree) == {"import_module"}


def test_importing_the_library_loads_no_orchestration_module():
    code = (
        "import sys, vssflow, vssflow.constants, vssflow.errors, vssflow.types, vssflow.inference, vssflow.generator, "
        "vssflow.commands.generate, vssflow.commands.synth, vssflow.commands.info; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'deepspeed', 'mlflow', 'pipelines'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def _project_imports() -> dict[str, set[str]]:
    """Every module of vssflow/ and pipelines/ -> the project modules it imports, by any import statement (at module
    level or inside a function: a deferred import still closes a circle, it only hides it until run time)."""
    files = {}
    for path in sorted([*ROOT.rglob("*.py"), *(ROOT.parent / "pipelines").rglob("*.py")]):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        files[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path

    def module_of(name: str) -> str | None:  # "vssflow.audio.codec.MelCodec" -> "vssflow.audio.codec"
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        names = set()
        for n in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(n, ast.Import):
                names.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                names.update([n.module, *(f"{n.module}.{a.name}" for a in n.names)])
        # a module's own package is imported before it anyway: naming it is no circle
        graph[module] = {m for m in map(module_of, names) if m and m != module and not module.startswith(m + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, out = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_circles():
    graph = _project_imports()
    assert "pipelines.train_loop" in graph["pipelines.train"]  # a module-level import
    assert "vssflow.features.span" in graph["vssflow.features.extract"]  # one inside a function
    assert _circles(graph) == []  # were speaker <-> speaker_trainable, codec <-> vae, deepspeed_config <-> train_loop


def test_the_circle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert _circles(graph) == [["a", "b", "c"], ["e", "f"]]
