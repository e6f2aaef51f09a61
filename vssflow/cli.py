"""The ``vssflow`` command line: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``. A module is imported only when
its command is asked for, so ``vssflow --help`` stays fast and the library never imports the orchestration layer
(``pipelines``, which needs Ray) unless a pipeline command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vssflow import __version__
from vssflow.errors import VssflowError

# name -> (module implementing it, one-line help); order is the order shown in --help
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("vssflow.commands.synth", "write the embedded synthetic audio-visual corpus (mp4 + manifest)"),
    "preprocess": ("pipelines.preprocess", "Ray Data: manifest of videos -> Parquet feature shards"),
    "train": ("pipelines.train", "Ray Train + DeepSpeed: train the joint model from shards"),
    "generate": ("vssflow.commands.generate", "generate audio (wav or muxed mp4) for one video"),
    "generate-batch": ("pipelines.generate_batch", "Ray Data: generate audio for a whole manifest or shard set"),
    "serve": ("pipelines.serve", "Ray Serve: HTTP API and web page for generation"),
    "evaluate": ("pipelines.evaluate", "evaluate a model on shards or a manifest; write a report"),
    "experiment": ("pipelines.experiment", "run one of the paper's experiments at small or full scale"),
    "info": ("vssflow.commands.info", "describe a saved model directory"),
}


def _load(name: str):
    module, _ = COMMANDS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            return None  # not part of this checkout yet
        raise


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
            mod = _load(name)
            if mod is None:
                parser.error(f"command {name!r} is not available in this installation")
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
        return int(args._run(args) or 0)
    except VssflowError as e:
        print(f"vssflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vssflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
