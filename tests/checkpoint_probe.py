"""Run by tests/test_train.py in a fresh process (one gloo rank): save a training checkpoint with the real engine,
resume from it, then plant a pickled object in each of its files and resume again; prints what was refused."""

import json
import os
import pathlib
import pickle
import sys
import tempfile

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from pipelines.deepspeed_config import build_engine  # noqa: E402
from pipelines.train_checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from pipelines.train_config import TrainJobConfig  # noqa: E402
from pipelines.train_model import build_model  # noqa: E402
from vssflow.ema import EMA  # noqa: E402


class Planted:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


dist.init_process_group("gloo", rank=0, world_size=1)
cfg = TrainJobConfig(engine=sys.argv[1], workers=1, model_overrides={"depth": 1})
engine, name = build_engine(build_model(cfg), cfg.engine_settings(), 1)
ema = EMA([(n, p) for n, p in engine.module.named_parameters() if p.requires_grad], decay=0.9)
gen = torch.Generator().manual_seed(5)
np.random.seed(3)
d = pathlib.Path(tempfile.mkdtemp())
position = {"step": 3, "epoch": 1, "batch_in_epoch": 2}
save_checkpoint(engine, ema, position, gen, str(d), 0)
want = (gen.get_state().clone(), torch.get_rng_state().clone(), np.random.get_state()[1].copy())
gen.manual_seed(99), torch.manual_seed(99), np.random.seed(99)
resumed = load_checkpoint(engine, ema, gen, str(d), 0) == position
resumed &= torch.equal(gen.get_state(), want[0]) and torch.equal(torch.get_rng_state(), want[1])
resumed &= bool((np.random.get_state()[1] == want[2]).all())

marker = d / "code-ran"
files, refused = sorted(p for p in d.rglob("*.pt")), []
for f in files:
    original = f.read_bytes()
    state = torch.load(f, weights_only=False)  # our own file, trusted here: add the planted object to it
    torch.save({**state, "planted": Planted(marker)}, f)
    try:
        load_checkpoint(engine, ema, gen, str(d), 0)
    except pickle.UnpicklingError:
        refused.append(f.name)
    f.write_bytes(original)
print(json.dumps({"engine": name, "resumed": resumed, "files": [f.name for f in files], "refused": refused,
                  "code_ran": marker.exists()}))  # fmt: skip
