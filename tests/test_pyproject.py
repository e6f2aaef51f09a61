"""pyproject.toml: every third-party module the code imports is a declared dependency, in the right group."""

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"vssflow", "pipelines", "__future__"}
# Imported only as a fallback inside ``except ImportError`` (ai-edge-litert, declared, is tried first).
FALLBACKS = {"tflite_runtime"}


def _names(requirements) -> set[str]:
    return {_norm(re.split(r"[\[=<>!~; ]", r.split("#")[0].strip(), maxsplit=1)[0]) for r in requirements if r.strip()}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    nodeps = [line for line in (ROOT / "requirements" / "nodeps.txt").read_text().splitlines() if line.split("#")[0]]
    extras = set().union(*(_names(v) for v in project["optional-dependencies"].values()), _names(nodeps))
    return _names(project["dependencies"]), extras


def _imports(path: Path, *, module_level: bool) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in tree.body if module_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - FIRST_PARTY - FALLBACKS - set(sys.stdlib_module_names)


def _undeclared(package: str, allowed: set[str], *, module_level: bool) -> dict[str, list[str]]:
    dists = metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in _imports(path, module_level=module_level):
            if not {_norm(d) for d in dists.get(module, [])} & allowed:
                missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    return missing


def test_library_module_level_imports_are_core_dependencies():
    # `pip install vssflow` (no extras) must be able to import every module of the library; an extra's package
    # (jiwer, gruut, ...) is imported inside the function that needs it.
    core, _ = _declared()
    missing = _undeclared("vssflow", core, module_level=True)
    assert not missing, f"imported at module level in vssflow/ but not in [project].dependencies: {missing}"


def test_every_import_is_declared_somewhere():
    # A package that arrives only as another package's dependency (num2words through gruut, pydantic through
    # fastapi) can vanish with that package's next release: whatever the code imports by name is declared.
    core, extras = _declared()
    for package in ("vssflow", "pipelines"):
        missing = _undeclared(package, core | extras, module_level=False)
        assert not missing, f"{package}/ imports packages pyproject.toml does not declare: {missing}"


def test_package_metadata_builds_without_setuptools_deprecations(tmp_path, monkeypatch):
    # `make install` printed a wall of SetuptoolsDeprecationWarning for the `project.license` table; the SPDX
    # string (PEP 639) is what setuptools >= 77 reads. Built in a copy, so the checkout gets no egg-info.
    import shutil
    import warnings

    from setuptools.build_meta import prepare_metadata_for_build_wheel

    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copy(ROOT / "README.md", tmp_path)
    for package in ("vssflow", "pipelines"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist_info = prepare_metadata_for_build_wheel(str(tmp_path / "out"))
    deprecations = [str(w.message).splitlines()[0] for w in caught if "Deprecat" in type(w.category).__name__
                    or "deprecat" in str(w.message).lower()]  # fmt: skip
    assert not deprecations, deprecations
    assert "License-Expression: Apache-2.0" in (tmp_path / "out" / dist_info / "METADATA").read_text()
