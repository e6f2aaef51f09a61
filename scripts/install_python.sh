#!/usr/bin/env bash
# Create .venv (if needed) and install vssflow with every pinned dependency.
# A stamp keyed by the hash of the dependency files makes reruns instant; VSSFLOW_VENV_CACHE=DIR keeps the venv
# outside the clone (DIR/<hash>) so CI can reuse it, and builds it from nothing when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
hash=$(cat pyproject.toml requirements/nodeps.txt scripts/install_python.sh | sha256sum | cut -c1-16)
if [ -n "${VSSFLOW_VENV_CACHE:-}" ]; then
  target="$VSSFLOW_VENV_CACHE/$hash"
  if [ ! -e .venv ] || [ "$(readlink -f .venv)" != "$(readlink -f "$target")" ]; then
    rm -rf .venv; mkdir -p "$VSSFLOW_VENV_CACHE"; [ -d "$target" ] || "$PY" -m venv "$target"; ln -s "$target" .venv
  fi
else
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
fi
if [ -f ".venv/.installed-$hash" ]; then
  .venv/bin/pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || .venv/bin/pip install -q --no-deps -e .
  exit 0
fi
echo "installing Python dependencies into .venv (a few minutes on a new machine)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[pipelines,assets,dev]"
.venv/bin/pip install -q --no-deps -r requirements/nodeps.txt
rm -f .venv/.installed-*
touch ".venv/.installed-$hash"
