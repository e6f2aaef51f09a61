"""The library layer (vssflow/) never imports the orchestration stack (STYLE.md rule 1, DESIGN.md "Two layers").

Not by an import statement, not by ``importlib.import_module`` / ``__import__`` (which no check can see through, so
the library makes none), and not by a string naming a ``pipelines`` module (``"pipelines.serve"``,
``"pipelines.serve:build_app"``): imports run one way, CLI and services -> pipelines/ -> vssflow/.
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
