"""The ``vssflow`` command line: one entry point, one module per subcommand, above both layers.

Imports run one way: this CLI -> ``pipelines`` (Ray, DeepSpeed, MLflow) -> ``vssflow`` (the library). Commands the
library can do alone (``synth``, ``generate``, ``info``) live in ``vssflow/commands/``; the others in ``pipelines/``.
Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int`` and is imported only when its
command is asked for, so ``vssflow --help`` stays fast and Ray is imported only by a command that needs it. A
``--model`` given as an MLflow URI to a library command is resolved to a local directory here, before it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vssflow import __version__
from vssflow.commands.flags import mlflow_uri
from vssflow.errors import VssflowError

# name -> (module implementing it, one-line help); order is the order shown in --help
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("vssflow.commands.synth", "write the embedded synthetic audio-visual corpus (mp4 + manifest)"),
    "preprocess": ("pipelines.preprocess", "Ray Data: manifest of videos -> Parquet feature shards"),
    "train": ("pipelines.train", "Ray Train + DeepSpeed: train the joint model from shards"),
    "generate": ("vssflow.commands.generate", "generate audio (wav or muxed mp4) for one video"),
    "dub": ("vssflow.commands.dub", "dub a whole video from its subtitles: speech for every cue over sound"),
    "generate-batch": ("pipelines.generate_batch", "Ray Data: generate audio for a whole manifest or shard set"),
    "dub-batch": ("pipelines.dub_batch", "Ray Data: dub every video of a manifest from its subtitles (resumable)"),
    "serve": ("pipelines.serve", "Ray Serve: HTTP API and web page for generation"),
    "evaluate": ("pipelines.evaluate", "evaluate a model on shards or a manifest; write a report"),
    "experiment": ("pipelines.experiment", "run one of the paper's experiments at small or full scale"),
    "info": ("vssflow.commands.info", "describe a saved model directory"),
}
LIBRARY_COMMANDS = tuple(name for name, (module, _) in COMMANDS.items() if module.startswith("vssflow."))


# what `pip install 'vssflow[pipelines]'` adds: a command whose module needs one of them says so in one line
_PIPELINES_EXTRA = {"ray", "deepspeed", "mlflow", "fastapi", "multipart", "httpx", "psycopg2", "yaml", "pydantic"}


def _load(name: str, parser: argparse.ArgumentParser):
    module, _ = COMMANDS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in _PIPELINES_EXTRA:
            parser.error(f"command {name!r} needs {e.name}, which is not installed: pip install 'vssflow[pipelines]'")
        raise


def _resolve_model(args: argparse.Namespace) -> None:
    """A library command's ``--model`` given as an MLflow URI -> the local copy (downloaded by ``pipelines``)."""
    from vssflow.inference import is_model_uri

    if args.command in LIBRARY_COMMANDS and is_model_uri(getattr(args, "model", None) or ""):
        from pipelines.model_uri import resolve_model_dir

        args.model = str(resolve_model_dir(args.model, tracking_uri=mlflow_uri(args)))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s own arguments are added (importing its module)."""
    parser = argparse.ArgumentParser(
        prog="vssflow",
        description="Generate sound effects and lip-synced speech for silent video (VSSFlow).",
    )
    parser.add_argument("--version", action="version", version=f"vssflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == command:
            mod = _load(name, parser)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        _resolve_model(args)
        return int(args._run(args) or 0)
    except VssflowError as e:
        print(f"vssflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a pipeline command that imports Ray (or MLflow, ...) only when it runs
        if (e.name or "").split(".")[0] not in _PIPELINES_EXTRA:
            raise
        print(f"vssflow {args.command}: error: needs {e.name}: pip install 'vssflow[pipelines]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vssflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
