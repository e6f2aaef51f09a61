"""The tests mirror the package (issue 14): each tests/test_NAME.py is named after what it tests.

NAME is a module or package folder of vssflow/, pipelines/ or bench/ (``test_codec`` -> vssflow/audio/codec.py,
``test_serve`` -> pipelines/serve/), a module in its folder (``test_serve_limits`` -> pipelines/serve/limits.py), or
a library command run as a process (``test_dub_cli`` -> vssflow/commands/dub.py). The few that test the project as
a whole are listed with what they test.
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
