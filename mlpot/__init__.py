"""mlpot: machine-learned interatomic potentials from training to production MD in ASE and LAMMPS."""

from ._version import __version__
from .calculator import MLPotCalculator
from .model_file import ModelFileError, export_model, load_model, read_metadata
from .neighbours import neighbour_list, primitive_neighbour_list

load = load_model
export = export_model


def load_potential(name: str, device: str = "cpu", dtype=None):
    """A shipped potential by name ("Si", "SiC", "water"), loaded like ``mlpot.load``."""
    from .potentials import potential_path

    return load_model(potential_path(name), device=device, dtype=dtype)

__all__ = [
    "__version__", "MLPotCalculator", "ModelFileError", "export", "export_model", "load",
    "load_model", "load_potential", "read_metadata", "neighbour_list", "primitive_neighbour_list",
]
