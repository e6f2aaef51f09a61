"""Render the KubeRay / Kubernetes manifests of vssflow from ONE values file.

    python cluster/render.py                         # cluster/values.yaml -> cluster/k8s/rendered/default/
    python cluster/render.py --overlay kind          # + cluster/k8s/overlays/kind.yaml (deep-merged on top)
    python cluster/render.py --set cluster.gpu_workers.max_replicas=16 --stdout | kubectl apply -f -

The template language is deliberately tiny (a kustomize-like subset needs no binary and stays readable):

* ``${a.b.c}`` as a *whole* YAML string is replaced by the value at that path, keeping its type (a number, a mapping,
  a list); inside a longer string it is interpolated as text.
* ``${fragment:NAME}`` is the rendered content of ``k8s/templates/_NAME.yaml`` (shared pieces such as the Ray
  cluster spec, used by both the RayCluster and the RayService).
* ``${yaml:EXPR}`` renders ``EXPR`` (a path or a fragment) and dumps it as a YAML *string* (for the CRD fields that
  are strings of YAML: ``RayService.spec.serveConfigV2``, ``RayJob.spec.runtimeEnvYAML``).
* A key whose value renders to ``null`` is left out (``storageClassName: ${storage.volume.storage_class}`` with a
  null value means "the cluster's default class", which an empty string would not).
* Values may refer to other values (``tag: ${versions.vssflow}-ray${versions.ray}``); they are resolved first.

Only the standard library and PyYAML are needed, so it runs on any machine that has ``kubectl``.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DIR = Path(__file__).resolve().parent
VALUES_FILE = CLUSTER_DIR / "values.yaml"
TEMPLATES_DIR = CLUSTER_DIR / "k8s" / "templates"
OVERLAYS_DIR = CLUSTER_DIR / "k8s" / "overlays"
RENDERED_DIR = CLUSTER_DIR / "k8s" / "rendered"

_REF = re.compile(r"\$\{([^}]+)\}")
_WHOLE = re.compile(r"^\$\{([^}]+)\}$")


class RenderError(ValueError):
    """A template refers to a value or fragment that does not exist, or a value cannot be parsed."""


# ---- values ----------------------------------------------------------------------------------------------------
def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: mappings merge key by key, anything else is replaced.

    An empty mapping in ``over`` replaces (clears) the mapping in ``base``, e.g. ``node_selector: {}``.
    """
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and v and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def lookup(values: dict, path: str) -> Any:
    """The value at a dotted path (``cluster.head.cpu``); RenderError naming the path when it is missing."""
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RenderError(f"no value at {path!r} (missing {part!r}); add it to cluster/values.yaml")
        node = node[part]
    return node


def _set_path(values: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def load_values(
    overlay: str | None = None, *, sets: list[str] | tuple[str, ...] = (), values_file: Path = VALUES_FILE
) -> dict:
    """values.yaml, then the named overlay, then ``--set path=value`` pairs; self-references resolved.

    Args:
        overlay: name of a file in ``k8s/overlays/`` (without ``.yaml``), or None.
        sets: ``"a.b=value"`` strings; the value is parsed as YAML (``3`` is an int, ``[a, b]`` a list).
    Returns:
        the merged mapping with every ``${...}`` inside values resolved.
    """
    values = yaml.safe_load(Path(values_file).read_text())
    if overlay:
        path = OVERLAYS_DIR / f"{overlay}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in OVERLAYS_DIR.glob("*.yaml"))
            raise RenderError(f"no overlay {overlay!r} in {OVERLAYS_DIR}; known: {', '.join(known)}")
        values = deep_merge(values, yaml.safe_load(path.read_text()) or {})
    for item in sets:
        if "=" not in item:
            raise RenderError(f"--set {item!r}: expected PATH=VALUE, e.g. cluster.gpu_workers.max_replicas=16")
        key, raw = item.split("=", 1)
        _set_path(values, key.strip(), yaml.safe_load(raw))
    # Resolve references between values until nothing changes (a cycle shows up as leftover ${...}).
    for _ in range(10):
        resolved = _substitute(values, values, fragments=False)
        if resolved == values:
            break
        values = resolved
    leftovers = sorted(set(_REF.findall(yaml.safe_dump(values))))
    if leftovers:
        raise RenderError(f"values refer to each other in a cycle: {', '.join(leftovers)}")
    return values


# ---- templates -------------------------------------------------------------------------------------------------
def _fragment(name: str, values: dict) -> Any:
    path = TEMPLATES_DIR / f"_{name}.yaml"
    if not path.is_file():
        raise RenderError(f"no fragment {name!r}: expected {path}")
    return _substitute(yaml.safe_load(path.read_text()), values)


def _evaluate(expr: str, values: dict, fragments: bool) -> Any:
    if expr.startswith("yaml:"):
        return yaml.safe_dump(_evaluate(expr[len("yaml:") :], values, fragments), sort_keys=False)
    if expr.startswith("fragment:"):
        if not fragments:
            raise RenderError(f"values cannot include fragments: ${{{expr}}}")
        return _fragment(expr[len("fragment:") :], values)
    return copy.deepcopy(lookup(values, expr))


def _substitute(node: Any, values: dict, fragments: bool = True) -> Any:
    if isinstance(node, dict):
        out = {k: _substitute(v, values, fragments) for k, v in node.items()}
        return {k: v for k, v in out.items() if not (v is None and node[k] is not None)}
    if isinstance(node, list):
        return [_substitute(v, values, fragments) for v in node]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _WHOLE.match(node)
    if whole:
        return _evaluate(whole.group(1), values, fragments)

    def text(m: re.Match) -> str:
        v = _evaluate(m.group(1), values, fragments)
        if isinstance(v, dict | list):
            raise RenderError(f"{m.group(0)} is a mapping or list and cannot be part of the string {node!r}")
        return str(v)

    return _REF.sub(text, node)


def template_files() -> list[Path]:
    """The manifest templates (fragments, whose names start with ``_``, are not manifests)."""
    return sorted(p for p in TEMPLATES_DIR.glob("*.yaml") if not p.name.startswith("_"))


def render(overlay: str | None = None, *, sets: list[str] | tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """Render every template.

    Returns:
        ``{template file name: [manifest dict, ...]}`` in file order.
    """
    values = load_values(overlay, sets=sets)
    out: dict[str, list[dict]] = {}
    for path in template_files():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        out[path.name] = [_substitute(d, values) for d in docs]
    return out


def write(rendered: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """Write each template's manifests to ``out_dir/<name>``; each file appears complete or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, docs in rendered.items():
        target = out_dir / name
        tmp = target.with_name(f".{name}.tmp")
        tmp.write_text(_dump(docs))
        os.replace(tmp, target)
        written.append(target)
    return written


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, shell scripts) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def _dump(docs: list[dict]) -> str:
    header = "# Rendered by cluster/render.py from cluster/values.yaml; edit the values or templates, not this file.\n"
    return header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python cluster/render.py", description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", help=f"an overlay in {OVERLAYS_DIR.relative_to(CLUSTER_DIR.parent)}/")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override one value")
    parser.add_argument("--out", type=Path, help="output directory (default cluster/k8s/rendered/<overlay>)")
    parser.add_argument("--stdout", action="store_true", help="print all manifests instead of writing files")
    args = parser.parse_args(argv)
    try:
        rendered = render(args.overlay, sets=args.set)
    except RenderError as e:
        print(f"render: error: {e}", file=sys.stderr)
        return 2
    if args.stdout:
        sys.stdout.write(_dump([d for docs in rendered.values() for d in docs]))
        return 0
    out_dir = args.out or RENDERED_DIR / (args.overlay or "default")
    for path in write(rendered, out_dir):
        kinds = ", ".join(d["kind"] for d in rendered[path.name])
        print(f"wrote {path} ({kinds})")
    print(f"apply with: kubectl apply -f {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
