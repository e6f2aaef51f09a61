"""The flags several commands share, defined once: the same name, help, default and parsing in every command.

``--model`` is always a model (a directory or an MLflow URI), ``--mlflow-uri`` always the tracking store (default
``$MLFLOW_TRACKING_URI``, then the command's local store), lists are comma-separated (``--mix 0.4,0.4,0.2``,
``--tasks v2s,tts``). An old spelling keeps working for one release and says so in one line on stderr.
(``--device`` is shared too: :data:`vssflow.device.DEVICE_HELP`.)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vssflow.constants import TASKS

__all__ = [
    "LOCAL_STORE_HELP",
    "MLFLOW_URI_HELP",
    "MODEL_HELP",
    "add_deprecated",
    "add_mix",
    "add_mlflow_uri",
    "add_model",
    "add_tasks",
    "mlflow_uri",
    "parse_mix",
    "parse_tasks",
]

MODEL_HELP = "model directory or MLflow URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/model)"
MLFLOW_URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {local})"
# the local store of train, evaluate and experiment (pipelines.mlflow_utils.store_uri): one, so their runs are seen
# together
LOCAL_STORE_HELP = "./runs/mlflow.db, shared by train, evaluate and experiment"
MIX_HELP = "{what} of v2s,tts,joint, comma-separated (default {default})"
TASKS_HELP = "comma-separated tasks to keep, of v2s,tts,joint (default: {default})"


def add_model(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--model``: the model to use (a directory, or an MLflow URI resolved to a local copy before the command)."""
    p.add_argument("--model", required=required, metavar="MODEL", help=MODEL_HELP)


def add_mlflow_uri(p: argparse.ArgumentParser, *, local: str, old: str | None = None) -> None:
    """``--mlflow-uri``; ``local`` says what the command uses when neither the flag nor the variable is set.
    ``old``: the flag's former spelling in this command (accepted one more release)."""
    p.add_argument("--mlflow-uri", default=None, metavar="URI", help=MLFLOW_URI_HELP.format(local=local))
    if old:
        add_deprecated(p, old, "--mlflow-uri", dest="mlflow_uri")


def mlflow_uri(args: argparse.Namespace) -> str | None:
    """The tracking URI a command uses: ``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else None (the command's
    local store)."""
    return getattr(args, "mlflow_uri", None) or os.environ.get("MLFLOW_TRACKING_URI") or None


def add_mix(p: argparse.ArgumentParser, *, what: str, default: Sequence[float]) -> None:
    """``--mix A,B,C``: three non-negative weights of v2s, tts and joint (parsed by :func:`parse_mix`)."""
    text = ",".join(f"{w:g}" for w in default)
    p.add_argument("--mix", type=parse_mix, default=tuple(float(w) for w in default), metavar="V2S,TTS,JOINT",
                   help=MIX_HELP.format(what=what, default=text))  # fmt: skip


def parse_mix(text: str) -> tuple[float, float, float]:
    """``"0.4,0.4,0.2"`` -> (0.4, 0.4, 0.2); the old ``"1:1:0.5"`` of ``train --mix`` still parses, with a notice."""
    parts = text.split(",")
    if ":" in text and len(parts) == 1:
        parts = text.split(":")
        print(f"vssflow: --mix {text}: the colon form is deprecated, write --mix {','.join(parts)}", file=sys.stderr)
    try:
        weights = tuple(float(x) for x in parts)
    except ValueError:
        weights = ()
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give three non-negative weights for v2s,tts,joint, e.g. 0.4,0.4,0.2"
        )
    return weights  # type: ignore[return-value]


def add_tasks(p: argparse.ArgumentParser, *, default: Sequence[str] | None = None) -> None:
    """``--tasks v2s,tts``: a subset of the tasks (parsed by :func:`parse_tasks`); None = every task."""
    text = "every task" if default is None else ",".join(default)
    p.add_argument("--tasks", type=parse_tasks, default=None if default is None else tuple(default),
                   metavar="TASK,...", help=TASKS_HELP.format(default=text))  # fmt: skip


def parse_tasks(text: str) -> tuple[str, ...] | None:
    """``"v2s,tts"`` -> ("v2s", "tts"); ``""`` -> None (every task). An unknown task is refused in one line."""
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown task(s) {unknown}; use some of {','.join(TASKS)}")
    return tasks or None


def add_deprecated(p: argparse.ArgumentParser, old: str, new: str, *, dest: str, append: bool = False) -> None:
    """Accept ``old`` for one more release as ``new`` (same ``dest``; ``append``: a repeatable flag), hidden from
    --help, with a one-line notice on stderr."""

    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"vssflow: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)
            setattr(namespace, dest, [*(getattr(namespace, dest, None) or []), values] if append else values)

    p.add_argument(old, dest=dest, action=Deprecated, help=argparse.SUPPRESS)
