"""The tests mirror the package (issue 14): each tests/test_NAME.py is named after what it tests.

NAME is a module or package folder of vssflow/, pipelines/ or bench/ (``test_codec`` -> vssflow/audio/codec.py,
``test_serve`` -> pipelines/serve/), a module in its folder (``test_serve_limits`` -> pipelines/serve/limits.py), or
a library command run as a process (``test_dub_cli`` -> vssflow/commands/dub.py). The few that test the project as
a whole are listed with what they test.

And the other way: every module of vssflow/ and pipelines/ has a test file named after it or its folder, or is
listed in NO_TEST_FILE with the reason (a package's ``__init__.py`` is tested with its folder).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vssflow", "pipelines", "bench")
PROJECT = {
    "boundary": "the layers: vssflow/ imports no orchestration module",
    "layout": "this check",
    "pyproject": "packaging: every import declared, the metadata builds",
    "cluster_config": "cluster/: Kubernetes manifests, the launcher, the images",
    "multinode": "cluster/: training and serving on a Ray cluster of several nodes",
    "mlflow_postgres": "pipelines/mlflow_utils.py against a PostgreSQL + artifact server the test starts",
    "serve_cluster": "pipelines/serve/ on a multi-node Ray cluster (separate nodes, separate disks)",
}
MIRRORED = ("vssflow", "pipelines")
# Modules without a test file of their own name. "test_NAME: why" means test_NAME.py tests it (and imports it).
NO_TEST_FILE = {
    "vssflow/constants.py": "named rates and sizes, no logic but latent_frames (one rounding, used in test_mixing)",
    "vssflow/errors.py": "exception types; each message is checked by the test of the module that raises it",
    "vssflow/types.py": "the ClipFeatures dataclass, no logic; test_schema round-trips it through Parquet",
    "vssflow/features/speaker_base.py": "test_speaker: the speaker encoder is one concept in three files (the "
    "reference-voice check and the interface, Resemblyzer, the trainable one); test_speaker tests all three and "
    "that they import in any order",
    "vssflow/features/speaker_trainable.py": "test_speaker: see vssflow/features/speaker_base.py",
}


def _names() -> set[str]:
    names = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT / pkg)
            if path.stem != "__init__":
                names.add(path.stem)
                if len(rel.parts) > 1:  # a module in its folder: serve_limits
                    names.add(f"{rel.parts[-2]}_{path.stem}")
        # folders: serve, audio, model, web (the page's static files)
        names.update(d.name for d in (ROOT / pkg).rglob("*") if d.is_dir() and d.name != "__pycache__")
    names.update(f"{p.stem}_cli" for p in (ROOT / "vssflow" / "commands").glob("*.py"))
    return names


def test_every_test_file_is_named_after_what_it_tests():
    known = _names()
    tests = sorted(p.stem.removeprefix("test_") for p in (ROOT / "tests").glob("test_*.py"))
    unnamed = [t for t in tests if t not in known and t not in PROJECT]
    assert not unnamed, f"test files named after nothing in {PACKAGES}: {['test_' + t for t in unnamed]}"
    assert set(PROJECT) <= set(tests), sorted(set(PROJECT) - set(tests))  # no stale exception


def _module_test_names(path: Path) -> set[str]:
    rel = path.relative_to(ROOT)
    folder = rel.parts[-2] if len(rel.parts) > 2 else None
    names = {path.stem}
    if folder:
        names |= {folder, f"{folder}_{path.stem}"}
    if rel.parts[:2] == ("vssflow", "commands"):
        names.add(f"{path.stem}_cli")
    return names


def test_every_module_has_a_test_file_named_after_it_or_a_reason():
    tests = {p.stem.removeprefix("test_") for p in (ROOT / "tests").glob("test_*.py")}
    modules = [p for pkg in MIRRORED for p in sorted((ROOT / pkg).rglob("*.py"))
               if "__pycache__" not in p.parts and p.stem != "__init__"]  # fmt: skip
    listed = {str(p.relative_to(ROOT)) for p in modules} & set(NO_TEST_FILE)
    untested = [str(p.relative_to(ROOT)) for p in modules
                if not _module_test_names(p) & tests and str(p.relative_to(ROOT)) not in NO_TEST_FILE]  # fmt: skip
    assert not untested, (
        f"modules without tests/test_<module or folder>.py (add one, or a reason to NO_TEST_FILE): {untested}"
    )
    stale = sorted(set(NO_TEST_FILE) - listed)
    assert not stale, f"NO_TEST_FILE names modules that are gone: {stale}"
    has_own = sorted(m for m in listed if _module_test_names(ROOT / m) & tests)
    assert not has_own, f"NO_TEST_FILE lists modules that now have their own test file: {has_own}"
    for module, reason in NO_TEST_FILE.items():
        name = reason.split(":")[0]
        if name.startswith("test_"):  # "tested in test_NAME": that file exists and imports the module
            dotted = module.removesuffix(".py").replace("/", ".")
            assert dotted in (ROOT / "tests" / f"{name}.py").read_text(), f"{module}: {name}.py does not import it"
