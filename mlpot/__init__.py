"""mlpot: machine-learned interatomic potentials from training to production MD in ASE and LAMMPS.

Attributes are imported on first use: LAMMPS' launcher imports ``mlpot.lammps`` (through the
``lammps.plugins`` entry point) at every start, which must not pay for importing torch.
"""

import importlib

from ._version import __version__

_EXPORTS = {
    "MLPotCalculator": "calculator",
    "ModelFileError": "model_file",
    "export_model": "model_file",
    "load_model": "model_file",
    "load_committee": "models.committee",
    "read_metadata": "model_file",
    "neighbour_list": "neighbours",
    "primitive_neighbour_list": "neighbours",
}
_ALIASES = {"load": "load_model", "export": "export_model"}

__all__ = ["__version__", "load", "export", "load_potential", *_EXPORTS]


def __getattr__(name):
    target = _ALIASES.get(name, name)
    if target in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[target]}", __name__), target)
    raise AttributeError(f"module 'mlpot' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


def load_potential(name: str, device: str = "cpu", dtype=None):
    """A shipped potential by name ("Si", "SiC", "water"), loaded like ``mlpot.load``."""
    from .model_file import load_model
    from .potentials import potential_path

    return load_model(potential_path(name), device=device, dtype=dtype)
