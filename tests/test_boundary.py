"""The library layer (vssflow/) never imports the orchestration stack (STYLE.md rule 1)."""

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = {"ray", "deepspeed", "mlflow", "pipelines"}
ROOT = Path(__file__).resolve().parents[1] / "vssflow"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_has_no_orchestration_imports():
    offenders = {}
    for path in ROOT.rglob("*.py"):
        bad = _imports(path) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(ROOT.parent))] = sorted(bad)
    assert not offenders, f"vssflow/ must not import {sorted(FORBIDDEN)}: {offenders}"


def test_importing_the_library_loads_no_orchestration_module():
    code = (
        "import sys, vssflow, vssflow.cli, vssflow.constants, vssflow.errors, vssflow.types; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'deepspeed', 'mlflow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
