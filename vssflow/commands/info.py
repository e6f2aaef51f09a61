"""``vssflow info MODEL_DIR``: what a saved model is (config, size, training step, codec, extractors)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vssflow.model_dir import read_model_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model directory written by `vssflow train` (or Generator.save_pretrained)")
    parser.add_argument("--json", action="store_true", help="print the whole config.json")


def run(args: argparse.Namespace) -> int:
    directory = Path(args.model)
    config = read_model_config(directory)
    if args.json:
        print(json.dumps(config, indent=2, sort_keys=True))
        return 0
    m = config["model"]
    placements = f"sem={m['sem_placement']} lip={m['lip_placement']} phonemes={m['phoneme_placement']} speaker=cross"
    files = sorted(p.name for p in directory.iterdir())
    print(f"model        {directory}")
    print(f"format       {config['format']} v{config['format_version']} (vssflow {config['vssflow_version']})")
    print(f"parameters   {config['num_params']:,}")
    print(
        f"DiT          depth {m['depth']}, width {m['width']}, heads {m['heads']}, cross_dim {m['cross_dim']}, "
        f"time conditioning {m['time_conditioning']}"
    )
    print(f"conditions   {placements}; sem_dim {m['sem_dim']}, lip input {m['lip_input']}")
    print(f"window       {m['max_seconds']} s")
    print(f"step         {config.get('step', 0)}")
    print(f"sampling     {config.get('sampling')}")
    print(f"weights      {', '.join(f for f in files if f.endswith('.safetensors'))}")
    for key, value in sorted(config.get("info", {}).items()):
        print(f"{key:<12} {value}")
    return 0
