"""pipelines/train_checkpoint.py: a checkpoint of the real engines resumes, and loads only tensors and plain values
(a planted pickle is refused, in a fresh one-rank process: tests/checkpoint_probe.py)."""

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")


@pytest.mark.parametrize("engine", ["zero2", "ddp"])
def test_checkpoints_resume_and_refuse_a_planted_pickle(engine):
    """Save a checkpoint with the real engine (DeepSpeed ZeRO-2, plain DDP) in a fresh one-rank process, resume
    (position and every RNG state come back), then plant a pickled object that would run code in each file of it
    (DeepSpeed's model and optimizer states, the EMA, the worker's RNG and data position): each is refused."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = Path(__file__).with_name("checkpoint_probe.py")
    out = subprocess.run([sys.executable, str(probe), engine, str(port)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["engine"] == engine and res["resumed"], res
    assert len(res["files"]) >= 3 and res["refused"] == res["files"] and not res["code_ran"], res
